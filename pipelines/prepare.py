"""DVC stage `prepare`: validate one dataset, quarantine bad rows with their reason.

Usage: `python pipelines/prepare.py NAME [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.data.stages import prepare_stage
from kappaflow.logging_utils import setup_logging

if __name__ == "__main__":
    setup_logging()
    stage_main(prepare_stage)
