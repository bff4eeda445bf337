"""DVC stage `finetune`: cross-validate one transfer strategy on one κ dataset.

Usage: `python pipelines/finetune.py STRATEGY DATASET [key=value ...]`.
"""

from kappaflow.stages.finetune import main

if __name__ == "__main__":
    main()
