"""DVC stage `pretrain`: pretrain one encoder (RUN is a key of `pretrain.runs`).

Usage: `python pipelines/pretrain.py RUN [key=value ...]`.
"""

from kappaflow.stages.pretrain import main

if __name__ == "__main__":
    main()
