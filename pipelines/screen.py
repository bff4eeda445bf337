"""DVC stage `screen`: score the screening pool with models:/<registry.model_name>@champion.

Usage: `python pipelines/screen.py [STRUCTURE_DIR ...] [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.screen import screen_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(screen_stage)
