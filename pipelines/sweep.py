"""Sweep entry for a DVC workspace: an Optuna study starting from ``params.yaml``.

Usage: ``python pipelines/sweep.py [n_trials=N] [storage=URL] [study=NAME] [workers=K]
[key=value ...]`` — the arguments of ``kappaflow sweep``, but the base config is ``params.yaml``
(what ``dvc exp run -S ...`` / ``kappaflow config dump`` composed) with dot-list overrides, and
each trial applies its overrides the same way; pick another space with ``dvc exp run -S
sweep=strategy`` (params.yaml), not here. Not a dvc.yaml stage: a sweep's result depends on the
shared, growing study storage (resumable, other workers), not only on tracked deps and params,
so DVC could neither cache it nor know when to re-run it; its durable output is
conf/experiment/best_<study>.yaml, which ``dvc exp run -S +experiment=best_<study>`` reproduces.
"""

import sys

from kappaflow.cli.sweep import run
from kappaflow.layout import project_root
from kappaflow.logging_utils import setup_logging

if __name__ == "__main__":
    setup_logging()
    sys.exit(run(sys.argv[1:], params_file=str(project_root() / "params.yaml")))
