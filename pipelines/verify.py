"""DVC stage `verify`: phono3py κ (universal potential) for the screen's top candidates.

Usage: `python pipelines/verify.py [key=value ...]`.
"""

from kappaflow.stages.verify import main

if __name__ == "__main__":
    main()
