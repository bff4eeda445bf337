"""DVC stage `featurize`: crystal graphs of one dataset (`python pipelines/featurize.py NAME`)."""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.featurize import featurize_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(featurize_stage)
