"""DVC stage `evaluate`: baselines on the same folds, reports/transfer.md, metrics, plots."""

from kappaflow.config import stage_main
from kappaflow.evaluation.stage import evaluate_stage
from kappaflow.logging_utils import setup_logging

if __name__ == "__main__":
    setup_logging()
    stage_main(evaluate_stage)
