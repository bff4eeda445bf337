"""DVC stage `evaluate`: baselines on the same folds, reports/transfer.md, metrics, plots."""

from kappaflow.stages.evaluate import main

if __name__ == "__main__":
    main()
