"""DVC stage `prepare`: validate one dataset, quarantine bad rows with their reason.

Usage: `python pipelines/prepare.py NAME [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.prepare import prepare_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(prepare_stage)
