"""bf16 autocast parity: ``precision: bf16-mixed`` trains like fp32 on a GPU.

The tiny CGCNN is trained twice from the same seed (same initial weights, same batches), once
in ``32-true`` and once in ``bf16-mixed``, and the per-epoch loss curves are compared.

Tolerance: the relative difference of the final train and validation loss, and the mean relative
difference over the whole curves, stay below 5 %, and both runs learn (final loss below half the
first epoch's). For scale: the same comparison with CPU bf16 autocast (not run here) differs by
at most 1.2 % per epoch (0.4 % on average) over 20 epochs. The fp32 reference on a GPU uses TF32
matmuls (``build_trainer`` sets ``float32_matmul_precision("high")``) and non-deterministic
scatter kernels, both far below this tolerance.

Needs a CUDA GPU with bf16; skipped otherwise (with that reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kappa_testkit as kt
import lightning as L
import pytest
import torch

from kappaflow.models import build_model
from kappaflow.training import GraphDataModule, KappaLightningModule, TargetTransform, fit
from kappaflow.training.callbacks import EpochHistory, read_history

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(),
    reason="bf16 parity needs a CUDA GPU with bf16; none here",
)

N = 80  # graphs: 48 train / 16 val / 16 test
EPOCHS = 20
RTOL = 0.05


def _curves(out: Path, precision: str) -> list[dict[str, float]]:
    cfg = kt.trainer_cfg(
        max_epochs=EPOCHS,
        batch_size=16,
        accelerator="gpu",
        devices=1,
        precision=precision,
        deterministic=False,
        scheduler={"name": "cosine", "warmup_epochs": 1},
    )
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    graphs = kt.tiny_graphs(N)
    tr, va, te = kt.split(N)
    dm = GraphDataModule(graphs, tr, va, te, batch_size=cfg["batch_size"], seed=cfg["seed"])
    tf = TargetTransform.fit(dm.train_targets(), ["log10"], ["kappa"])
    module = KappaLightningModule.from_cfg(build_model(kt.TINY_CGCNN, 1), tf, cfg)
    res = fit(cfg, module, dm, out, callbacks=[EpochHistory(out / "history.csv")], test=False)
    assert res.epochs_run == EPOCHS
    return read_history(out / "history.csv")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


@pytest.mark.timeout(600)
def test_bf16_mixed_loss_curves_match_fp32(tmp_path: Path) -> None:
    fp32 = _curves(tmp_path / "fp32", "32-true")
    bf16 = _curves(tmp_path / "bf16", "bf16-mixed")
    assert len(fp32) == len(bf16) == EPOCHS
    report: dict[str, Any] = {}
    for key in ("train/loss", "val/loss"):
        a = [r[key] for r in fp32]
        b = [r[key] for r in bf16]
        rel = [_rel(x, y) for x, y in zip(a, b, strict=True)]
        report[key] = {"final": rel[-1], "mean": sum(rel) / len(rel), "max": max(rel)}
        for curve in (a, b):  # both runs learn
            assert curve[-1] < 0.5 * curve[0], (key, curve)
    print(f"\nbf16-mixed vs fp32 relative loss differences: {report}")
    for key, rel in report.items():
        assert rel["final"] < RTOL, (key, rel)
        assert rel["mean"] < RTOL, (key, rel)
