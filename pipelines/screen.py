"""DVC stage `screen`: score the screening pool with models:/<registry.model_name>@champion.

Usage: `python pipelines/screen.py [STRUCTURE_DIR ...] [key=value ...]`.
"""

from kappaflow.stages.screen import main

if __name__ == "__main__":
    main()
