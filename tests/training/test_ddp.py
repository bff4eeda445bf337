"""``trainer.devices: 2`` on CPU: two DDP (gloo) processes train exactly like one process.

Same seed, data and initial weights; one process with batch ``2B`` against two processes with
batch ``B`` each. The datamodule deals every step's ``2B`` graphs of the epoch permutation
round-robin to the two ranks and DDP averages the two ranks' mean gradients, so every optimizer
step sees the same gradient as the single process up to float summation order. This needs:

* a training split divisible by ``2B`` (else the last, short batch is split unevenly and the
  distributed sampler pads it with repeated graphs);
* a model without batch norm: ``CGConv(batch_norm=True)`` normalises with per-rank batch
  statistics (``B`` graphs, not ``2B``), which is ordinary DDP behaviour but not the same
  computation; the tiny CGCNN with ``n_conv: 0`` (embedding, mean pooling, MLP) has none.

Validation/test splits of odd size check that every graph is evaluated exactly once (the shorter
shard is padded with target-less graphs) and that the logged metrics cover the whole split.

Runs everywhere (no GPU, no skip); ~1 s of training per 2-process fit on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kappa_testkit as kt
import lightning as L
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from kappaflow.models import build_model
from kappaflow.training import GraphDataModule, KappaLightningModule, TargetTransform, fit
from kappaflow.training.callbacks import EpochHistory, read_history
from kappaflow.training.trainer import resolve_cfg

MODEL = {**kt.TINY_CGCNN, "n_conv": 0}  # no batch norm (see the module docstring)
N, N_TRAIN, N_VAL = 41, 24, 9  # train 24 = 3 steps of 8; val 9 (odd), test 8
B = 4  # per-process batch of the 2-process run
EPOCHS = 6
#: Agreement of 1 and 2 processes: measured ~1e-8 (weights) and ~1e-7 relative (metrics). The
#: wrong implementations this guards against differ by orders of magnitude more, see
#: test_tolerances_separate_wrong_implementations.
WEIGHT_ATOL = 1e-5
METRIC_RTOL = 1e-4


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(0).permutation(N)
    return idx[:N_TRAIN], idx[N_TRAIN : N_TRAIN + N_VAL], idx[N_TRAIN + N_VAL :]


def _cfg(devices: int, batch_size: int) -> dict[str, Any]:
    return kt.trainer_cfg(
        max_epochs=EPOCHS,
        batch_size=batch_size,
        eval_batch_size=2,  # several eval batches per rank (4 or 5 graphs per shard)
        devices=devices,
        optim={"lr": 0.01},
        scheduler={"name": "cosine", "warmup_epochs": 1},  # step count must match too
        early_stopping={"patience": 20},  # present (a cross-rank decision), never triggers
    )


def _train(out: Path, devices: int, batch_size: int) -> dict[str, Any]:
    cfg = _cfg(devices, batch_size)
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    graphs = kt.tiny_graphs(N)
    tr, va, te = _split()
    dm = GraphDataModule(
        graphs, tr, va, te, batch_size=batch_size, eval_batch_size=2, seed=cfg["seed"]
    )
    tf = TargetTransform.fit(dm.train_targets(), ["log10"], ["kappa"])
    module = KappaLightningModule.from_cfg(build_model(MODEL, 1), tf, cfg)
    res = fit(cfg, module, dm, out, callbacks=[EpochHistory(out / "history.csv")])
    last = torch.load(res.last_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {
        "res": res,
        "module": res.trainer.lightning_module,
        "graphs": graphs,
        "val_idx": va,
        "history": read_history(out / "history.csv"),
        "best_state": {k: v.clone() for k, v in res.trainer.lightning_module.state_dict().items()},
        "last_state": last,
    }


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ddp")
    return {
        "one": _train(root / "one", devices=1, batch_size=2 * B),
        "two": _train(root / "two", devices=2, batch_size=B),
    }


def test_auto_strategy_resolves_to_forked_ddp_on_cpu() -> None:
    cfg = kt.trainer_cfg(devices=2)
    assert resolve_cfg(cfg)["strategy"] == "ddp_fork"
    assert resolve_cfg(kt.trainer_cfg())["strategy"] == "auto"  # devices: 1
    assert resolve_cfg({**cfg, "strategy": "ddp_spawn"})["strategy"] == "ddp_spawn"


@pytest.mark.timeout(300)
def test_two_processes_match_one_process(runs: dict[str, dict[str, Any]]) -> None:
    one, two = runs["one"], runs["two"]
    r1, r2 = one["res"], two["res"]
    assert (r1.trainer.world_size, r2.trainer.world_size) == (1, 2)
    assert type(r2.trainer.strategy).__name__ == "DDPStrategy"
    # the caller gets rank 0's outcome back from the workers
    assert r2.epochs_run == r1.epochs_run == EPOCHS and r2.first_epoch == r1.first_epoch == 0
    assert r2.trainer.current_epoch == r1.trainer.current_epoch == EPOCHS
    assert not r1.stopped_early and not r2.stopped_early
    assert r2.best_ckpt is not None and r1.best_ckpt is not None
    assert r2.best_ckpt.name == r1.best_ckpt.name and r2.best_ckpt.is_file()
    assert r1.best_ckpt.name != "best-epoch=000.ckpt"  # the model learns: a later epoch wins

    report: dict[str, float] = {
        "best weights max|d|": _max_abs_diff(one["best_state"], two["best_state"]),
        "last weights max|d|": _max_abs_diff(one["last_state"], two["last_state"]),
        "best_val_loss rel": _rel(r1.best_val_loss, r2.best_val_loss),
    }
    assert set(r1.val_metrics) == set(r2.val_metrics) and set(r1.test_metrics) == set(
        r2.test_metrics
    )
    for key in (*r1.val_metrics, *r1.test_metrics):
        metrics1 = r1.val_metrics if key.startswith("val/") else r1.test_metrics
        metrics2 = r2.val_metrics if key.startswith("val/") else r2.test_metrics
        report[f"{key} rel"] = _rel(metrics1[key], metrics2[key])
    h1, h2 = one["history"], two["history"]
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == list(range(EPOCHS))
    for key in ("train/loss", "val/loss"):
        report[f"{key} curve max rel"] = max(
            _rel(a[key], b[key]) for a, b in zip(h1, h2, strict=True)
        )
    print("\n1 vs 2 processes: " + ", ".join(f"{k}={v:.1e}" for k, v in report.items()))

    assert report["best weights max|d|"] < WEIGHT_ATOL
    assert report["last weights max|d|"] < WEIGHT_ATOL
    for key, value in report.items():
        if key.endswith("rel"):
            assert value < METRIC_RTOL, key
    assert h1[-1]["train/loss"] < h1[0]["train/loss"]  # it trains


def test_tolerances_separate_wrong_implementations(
    runs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """What the tolerances above would catch.

    * DDP without gradient averaging or with every rank on all the data trains like one process
      with batch ``B`` (twice the steps): its weights are far outside ``WEIGHT_ATOL``;
    * metrics of one rank's shard instead of the whole split are far outside ``METRIC_RTOL``.
    """
    one = runs["one"]
    small_batch = _train(tmp_path / "batch_b", devices=1, batch_size=B)
    d_weights = _max_abs_diff(one["last_state"], small_batch["last_state"])

    module = one["module"].eval()
    graphs, va = one["graphs"], one["val_idx"]
    with torch.no_grad():
        pred = module(Batch.from_data_list([graphs[i] for i in va]))
    y = torch.cat([graphs[i].y.reshape(1, -1) for i in va]).float()
    full = float(module.split_metrics("val", pred, y)["val/loss"])
    shard = float(module.split_metrics("val", pred[::2], y[::2])["val/loss"])
    print(f"\nbatch B vs 2B: weights max|d|={d_weights:.1e}; val/loss one shard vs all: ", end="")
    print(f"rel={_rel(full, shard):.1e}")
    assert _rel(full, one["res"].val_metrics["val/loss"]) < 1e-6  # metrics = the whole split
    assert d_weights > 100 * WEIGHT_ATOL
    assert _rel(full, shard) > 100 * METRIC_RTOL
