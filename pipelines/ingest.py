"""DVC stage `ingest`: copy/download one raw dataset into data/raw/.

Usage: `python pipelines/ingest.py NAME [key=value ...]`.
"""

from kappaflow.stages.ingest import main

if __name__ == "__main__":
    main()
