"""DVC stage `pretrain_size`: κ error of transfer vs pretraining-set size (TL-CGCNN).

Usage: `python pipelines/pretrain_size.py [key=value ...]`.
"""

from kappaflow.stages.pretrain_size import main

if __name__ == "__main__":
    main()
