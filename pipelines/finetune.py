"""DVC stage `finetune`: cross-validate one transfer strategy on one κ dataset.

Usage: `python pipelines/finetune.py STRATEGY DATASET [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.finetune import finetune_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(finetune_stage)
