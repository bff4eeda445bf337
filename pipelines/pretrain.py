"""DVC stage `pretrain`: pretrain one encoder (RUN is a key of `pretrain.runs`).

Usage: `python pipelines/pretrain.py RUN [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.pretrain import pretrain_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(pretrain_stage)
