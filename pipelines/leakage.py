"""DVC stage `leakage`: map the same material across datasets (`python pipelines/leakage.py`)."""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.leakage import leakage_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(leakage_stage)
