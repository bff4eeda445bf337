"""DVC stage `ingest`: copy/download one raw dataset into data/raw/.

Usage: `python pipelines/ingest.py NAME [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.ingest import ingest_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(ingest_stage)
