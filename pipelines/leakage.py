"""DVC stage `leakage`: map the same material across datasets (`python pipelines/leakage.py`)."""

from kappaflow.config import stage_main
from kappaflow.data.stages import leakage_stage
from kappaflow.logging_utils import setup_logging

if __name__ == "__main__":
    setup_logging()
    stage_main(leakage_stage)
