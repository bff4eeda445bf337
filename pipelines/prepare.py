"""DVC stage `prepare`: validate one dataset, quarantine bad rows with their reason.

Usage: `python pipelines/prepare.py NAME [key=value ...]`.
"""

from kappaflow.stages.prepare import main

if __name__ == "__main__":
    main()
