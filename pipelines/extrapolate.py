"""DVC stage `extrapolate`: train on low κ, rank the held-out high-κ compounds (Ju et al.).

Usage: `python pipelines/extrapolate.py [key=value ...]`.
"""

from kappaflow.config import stage_main
from kappaflow.logging_utils import setup_logging
from kappaflow.stages.extrapolate import extrapolate_stage

if __name__ == "__main__":
    setup_logging()
    stage_main(extrapolate_stage)
