"""DVC stage `register`: log the best transferred κ ensemble, register it, gate the promotion.

Usage: `python pipelines/register.py [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.register import register_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(register_stage)
