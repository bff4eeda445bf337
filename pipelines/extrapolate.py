"""DVC stage `extrapolate`: train on low κ, rank the held-out high-κ compounds (Ju et al.).

Usage: `python pipelines/extrapolate.py [key=value ...]`.
"""

from kappaflow.stages.extrapolate import main

if __name__ == "__main__":
    main()
