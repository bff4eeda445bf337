"""DVC stage `register`: log the best transferred κ ensemble, register it, gate the promotion.

Usage: `python pipelines/register.py [key=value ...]`.
"""

from kappaflow.stages.register import main

if __name__ == "__main__":
    main()
