"""DVC stage `phonons`: phonon descriptors from a universal potential, and whether they help.

Usage: `python pipelines/phonons.py [key=value ...]`.
"""

from kappaflow.stages.phonons import main

if __name__ == "__main__":
    main()
