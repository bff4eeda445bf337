"""DVC stage `pretrain`: pretrain one encoder (`python pipelines/pretrain.py RUN`, RUN in pretrain.runs)."""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.training.pretrain import pretrain_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(pretrain_stage)
