"""Tiny in-code crystals, graphs and a tiny real CGCNN for the training/tracking tests.

Imported by tests/training/*, tests/tracking/* and the kill-and-resume subprocess script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from kappaflow.graphs.build import crystal_to_graph
from kappaflow.structure.crystal import CrystalArrays

CUTOFF = 5.0
MAX_NEIGHBORS = 8
TINY_CGCNN: dict[str, Any] = {
    "name": "cgcnn",
    "atom_fea_len": 16,
    "n_conv": 1,
    "h_fea_len": 16,
    "n_h": 1,
    "cutoff": CUTOFF,
    "max_neighbors": MAX_NEIGHBORS,
    "head_dropout": 0.0,
}
_PAIRS = [("Na", "Cl"), ("Mg", "O"), ("K", "Br"), ("Ca", "S"), ("Li", "F"), ("Pb", "Te"),
          ("Ag", "I"), ("Zn", "Se"), ("Ga", "As"), ("Sr", "O")]  # fmt: skip


def tiny_structures(n: int = 40) -> list[Structure]:
    """``n`` small binary crystals: rocksalt, CsCl and zincblende cells of varying size."""
    out = []
    for i in range(n):
        a_el, b_el = _PAIRS[i % len(_PAIRS)]
        kind = (i // len(_PAIRS)) % 3
        a = 3.6 + 0.05 * (i % 17)
        if kind == 0:  # CsCl-type, 2 atoms
            s = Structure(Lattice.cubic(a * 0.8), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]])
        elif kind == 1:  # rocksalt primitive, 2 atoms
            s = Structure(
                Lattice.from_parameters(a, a, a, 60, 60, 60),
                [a_el, b_el],
                [[0, 0, 0], [0.5, 0.5, 0.5]],
            )
        else:  # zincblende primitive, 2 atoms
            s = Structure(
                Lattice.from_parameters(a, a, a, 60, 60, 60),
                [a_el, b_el],
                [[0, 0, 0], [0.25, 0.25, 0.25]],
            )
        out.append(s)
    return out


def synthetic_kappa(s: Structure) -> float:
    """A positive, smooth 'κ' in W/m/K from volume per atom and mean atomic number."""
    v = s.volume / len(s)
    zbar = float(np.mean([site.specie.Z for site in s]))
    return float(10 ** (2.5 - 0.04 * v - 0.012 * zbar))


def tiny_graphs(n: int = 40, multi: bool = False) -> list[Any]:
    """Graphs of :func:`tiny_structures` with κ (``multi``: 2 targets, some NaN)."""
    graphs = []
    for i, s in enumerate(tiny_structures(n)):
        k = synthetic_kappa(s)
        y = [k, (np.nan if i % 4 == 0 else s.volume / len(s))] if multi else [k]
        graphs.append(
            crystal_to_graph(
                CrystalArrays.from_structure(s), CUTOFF, MAX_NEIGHBORS, y=y, material_id=f"m-{i}"
            )
        )
    return graphs


def split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed 60/20/20 split of ``range(n)``."""
    idx = np.random.default_rng(0).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return idx[:a], idx[a:b], idx[b:]


def trainer_cfg(**over: Any) -> dict[str, Any]:
    """A fast deterministic CPU trainer config."""
    cfg: dict[str, Any] = {
        "seed": 7,
        "max_epochs": 3,
        "batch_size": 8,
        "accelerator": "cpu",
        "precision": "32-true",
        "progress_bar": "none",
        "csv_logger": False,
        "early_stopping": {"patience": 0},
        "optim": {"lr": 3e-3, "weight_decay": 0.0, "encoder_lr_mult": 1.0},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def resume_cfg(max_epochs: int = 6) -> dict[str, Any]:
    """Config of the kill-and-resume test: plateau schedule that cuts the lr after epoch 2."""
    return trainer_cfg(
        max_epochs=max_epochs,
        scheduler={"name": "plateau", "patience": 0, "factor": 0.5},
        optim={"lr": 0.03, "weight_decay": 1e-4},
        early_stopping={"patience": 3},
    )


def run_training(
    out_dir: Path,
    cfg: dict[str, Any],
    *,
    n: int = 40,
    multi: bool = False,
    callbacks: list[Any] | None = None,
) -> Any:
    """Seed, build tiny CGCNN + data, and :func:`kappaflow.training.fit`; return the FitResult."""
    import lightning as L

    from kappaflow.models import build_model
    from kappaflow.training import GraphDataModule, KappaLightningModule, TargetTransform, fit

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    graphs = tiny_graphs(n, multi=multi)
    tr, va, te = split(n)
    dm = GraphDataModule(graphs, tr, va, te, batch_size=cfg["batch_size"], seed=cfg["seed"])
    transforms = ["log10", "none"] if multi else ["log10"]
    names = ["kappa", "vpa"] if multi else ["kappa"]
    tf = TargetTransform.fit(dm.train_targets(), transforms, names)
    model = build_model(TINY_CGCNN, len(names))
    module = KappaLightningModule.from_cfg(model, tf, cfg)
    return fit(cfg, module, dm, out_dir, callbacks=callbacks)


def result_summary(res: Any) -> dict[str, Any]:
    """Plain-JSON summary of a FitResult (exact floats) for comparisons across processes."""
    return {
        "best_val_loss": res.best_val_loss,
        "val": res.val_metrics,
        "test": res.test_metrics,
        "epochs_run": res.epochs_run,
        "first_epoch": res.first_epoch,
        "resumed": res.resumed_from is not None,
        "stopped_early": res.stopped_early,
        "current_epoch": int(res.trainer.current_epoch),
        "weights_sum": float(
            sum(p.detach().double().sum() for p in res.trainer.lightning_module.parameters())
        ),
        "lr": [float(g["lr"]) for g in res.trainer.optimizers[0].param_groups],
    }


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Exact equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def perturbed_export(
    card: dict[str, Any],
    graphs: list[Any],
    path: Path,
    target_names: list[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save a stand-in 'pretrained' model: ``card``'s model with non-trivial weights and BN stats.

    Every parameter moves by 0.1·N(0, 1) (``torch.manual_seed(0)``) and one training-mode pass
    over ``graphs`` moves the batch-norm running statistics; targets untransformed.
    """
    from torch_geometric.data import Batch

    from kappaflow.models import build_model
    from kappaflow.training.export import save_model
    from kappaflow.training.target_transform import TargetTransform

    torch.manual_seed(0)
    model = build_model(card, len(target_names))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.train()
        model(Batch.from_data_list(graphs))
    transform = TargetTransform(["none"] * len(target_names), target_names)
    return save_model(path, model, transform, card, meta=meta)
