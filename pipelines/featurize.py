"""DVC stage `featurize`: crystal graphs of one dataset (`python pipelines/featurize.py NAME`)."""

from kappaflow.stages.featurize import main

if __name__ == "__main__":
    main()
