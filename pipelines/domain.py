"""DVC stage `domain`: hold out structure families / anions and score the out-of-domain signals.

Usage: `python pipelines/domain.py [key=value ...]`.
"""

from kappaflow.stages.domain import main

if __name__ == "__main__":
    main()
