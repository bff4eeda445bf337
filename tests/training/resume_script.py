"""Subprocess target of the kill-and-resume test: train the tiny CGCNN, write result.json.

Usage: ``python resume_script.py OUT_DIR``. If env ``KAPPAFLOW_TEST_KILL_AT=E:B`` is set and
``OUT_DIR/killed`` does not exist yet, the process creates that marker and SIGKILLs itself at
the start of training batch B of epoch E (a real ``kill -9``: no cleanup, no checkpoint).
Re-running the same command then resumes from ``OUT_DIR/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import kappa_testkit as kt  # the script's folder is sys.path[0]
import lightning as L
import torch


class KillAt(L.Callback):
    def __init__(self, epoch: int, batch: int, marker: Path) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, marker

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and idx == self.batch and not self.marker.exists():
            self.marker.write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    callbacks = []
    if kill := os.environ.get("KAPPAFLOW_TEST_KILL_AT"):
        e, b = (int(x) for x in kill.split(":"))
        callbacks.append(KillAt(e, b, out / "killed"))
    res = kt.run_training(out, kt.resume_cfg(), multi=True, callbacks=callbacks)
    (out / "result.json").write_text(json.dumps(kt.result_summary(res), indent=1))


if __name__ == "__main__":
    main()
