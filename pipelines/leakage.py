"""DVC stage `leakage`: map the same material across datasets (`python pipelines/leakage.py`)."""

from kappaflow.stages.leakage import main

if __name__ == "__main__":
    main()
