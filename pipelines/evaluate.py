"""DVC stage `evaluate`: baselines on the same folds, reports/transfer.md, metrics, plots."""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.evaluate import evaluate_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(evaluate_stage)
