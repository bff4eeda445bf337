"""DVC stage `pretrain_size`: κ error of transfer vs pretraining-set size (TL-CGCNN).

Usage: `python pipelines/pretrain_size.py [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.pretrain_size import pretrain_size_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(pretrain_size_stage)
