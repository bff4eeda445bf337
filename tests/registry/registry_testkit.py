"""Tiny κ ensembles, crystals and a scratch project for the registry and screening tests.

Imported by tests/registry/* and tests/screen/* (pyproject.toml's pytest ``pythonpath`` puts this
folder on sys.path); their conftest re-exports the fixtures defined here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from kappaflow.structure.crystal import CrystalArrays
from stage_testkit import FULL_PROFILE

CUTOFF = 5.0
MAX_NEIGHBORS = 8
TINY_CGCNN: dict[str, Any] = {
    "name": "cgcnn",
    "atom_fea_len": 8,
    "n_conv": 1,
    "h_fea_len": 8,
    "n_h": 1,
    "cutoff": CUTOFF,
    "max_neighbors": MAX_NEIGHBORS,
    "head_dropout": 0.0,
}
_FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def rocksalt(a_el: str, b_el: str, a: float) -> Structure:
    """Conventional rocksalt cell (8 atoms), lattice constant ``a`` in Å."""
    shifted = [[x + 0.5 if i == 0 else x for i, x in enumerate(p)] for p in _FCC]
    shifted = [[c % 1.0 for c in p] for p in shifted]
    return Structure(Lattice.cubic(a), [a_el] * 4 + [b_el] * 4, _FCC + shifted)


def zincblende(a_el: str, b_el: str, a: float) -> Structure:
    """Conventional zincblende/diamond cell (8 atoms), lattice constant ``a`` in Å."""
    quarter = [[c + 0.25 for c in p] for p in _FCC]
    return Structure(Lattice.cubic(a), [a_el] * 4 + [b_el] * 4, _FCC + quarter)


def nacl() -> Structure:
    """Rocksalt NaCl (a = 5.64 Å)."""
    return rocksalt("Na", "Cl", 5.64)


def silicon() -> Structure:
    """Diamond Si (a = 5.43 Å)."""
    return zincblende("Si", "Si", 5.43)


def training_structures() -> list[tuple[str, Structure, float]]:
    """(id, structure, κ W/m/K) of a small binary training set (no Si, no Xe)."""
    return [
        ("t-nacl", nacl(), 7.1),
        ("t-kcl", rocksalt("K", "Cl", 6.29), 7.0),
        ("t-mgo", rocksalt("Mg", "O", 4.21), 50.0),
        ("t-gaas", zincblende("Ga", "As", 5.65), 45.0),
        ("t-alas", zincblende("Al", "As", 5.66), 90.0),
        ("t-nabr", rocksalt("Na", "Br", 5.97), 2.8),
    ]


def cif(structure: Structure) -> str:
    """pymatgen ``CifWriter`` text of a structure."""
    return str(CifWriter(structure))


def write_members(
    out_dir: Path, n: int = 3, seed: int = 0, mean: float = 1.0, prefix: str = "repeat0-fold"
) -> list[Path]:
    """Write ``n`` tiny random CGCNN members (log10 κ transform) as one-file exports."""
    import torch

    from kappaflow.models import build_model
    from kappaflow.training.export import save_model
    from kappaflow.training.target_transform import TargetTransform

    paths = []
    for k in range(n):
        torch.manual_seed(seed * 100 + k)
        model = build_model(TINY_CGCNN, 1)
        tf = TargetTransform(["log10"], ["kappa"], [mean], [0.5])
        paths.append(save_model(out_dir / f"{prefix}{k}.pt", model, tf, TINY_CGCNN, {"k": k}))
    return paths


def prepared_table(rows: list[tuple[str, Structure, float]], target: str = "kappa") -> pd.DataFrame:
    """A ``valid.parquet``-like table (id, formula, spacegroup, n_sites, arrays, target)."""
    from kappaflow.data.validation import spacegroup_number, structure_formula

    out = []
    for rid, s, k in rows:
        c = CrystalArrays.from_structure(s)
        out.append(
            {
                "id": rid,
                "formula": structure_formula(c),
                "spacegroup": spacegroup_number(c),
                "n_sites": c.n_sites,
                **c.to_row(),
                target: k,
            }
        )
    return pd.DataFrame(out)


def write_prepared(root: Path, name: str, table: pd.DataFrame) -> Path:
    """Write ``data/interim/<name>/valid.parquet`` under ``root``."""
    d = root / "data" / "interim" / name
    d.mkdir(parents=True, exist_ok=True)
    table.to_parquet(d / "valid.parquet", index=False)
    return d / "valid.parquet"


def write_candidate(
    root: Path,
    strategy: str,
    dataset: str,
    metric: float,
    seed: int = 0,
    n_members: int = 2,
    n_rows: int = 6,
    val_metric: float | None = -1.0,
) -> list[Path]:
    """models/finetune/<strategy>/<dataset>/{cv.json, folds/*.pt} as the finetune stage does.

    ``val_metric``: the validation-row log10-MAE (``selection`` of cv.json, what the register
    stage chooses by); -1 (default): the same as ``metric``; None: not recorded.
    """
    out = root / "models" / "finetune" / strategy / dataset
    (out / "folds").mkdir(parents=True, exist_ok=True)
    cv = {
        "strategy": strategy,
        "dataset": dataset,
        "config": {
            "n_splits": n_members,
            "n_repeats": 1,
            "seed": 42,
            "val_fraction": 0.1,
            "group_level": "formula",
            "n_rows": n_rows,
        },
        "summary": {"log10_mae_mean": metric, "log10_mae_std": 0.01},
        "folds": _folds(metric, n_members, n_rows),
    }
    if val_metric is not None:
        val = metric if val_metric == -1.0 else val_metric
        cv["selection"] = {"val_log10_mae_mean": val, "val_log10_mae_std": 0.01}
    (out / "cv.json").write_text(json.dumps(cv))
    # out-of-fold predictions whose |log10 residual| is `metric` (conformal calibration input)
    rows = [
        {"id": f"m{i}", "repeat": 0, "fold": i % n_members, "kappa_true": 10.0}
        | {"kappa_pred": 10.0 * 10 ** (metric * (1 if i % 2 else -1))}
        for i in range(n_rows)
    ]
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    return write_members(out / "folds", n_members, seed=seed)


def _folds(metric: float, n_folds: int, n_rows: int) -> list[dict[str, Any]]:
    """Per-fold records as the CV protocol writes them (same log10-MAE in every fold)."""
    n_test = n_rows // n_folds
    return [
        {
            "repeat": 0,
            "fold": k,
            "n_train": n_rows - n_test - 1,
            "n_val": 1,
            "n_test": n_test,
            "metrics": {"log10_mae": metric},
        }
        for k in range(n_folds)
    ]


def write_baseline(
    root: Path, name: str, dataset: str, metric: float, n_folds: int = 2, n_rows: int = 6
) -> Path:
    """models/baselines/<name>/<dataset>/cv.json as the evaluate stage writes it."""
    out = root / "models" / "baselines" / name / dataset
    out.mkdir(parents=True, exist_ok=True)
    cv = {
        "strategy": f"baseline:{name}",
        "dataset": dataset,
        "folds": _folds(metric, n_folds, n_rows),
    }
    (out / "cv.json").write_text(json.dumps(cv))
    return out / "cv.json"


def tiny_cfg(root: Path, dataset: str = "paraisite_d1") -> Any:
    """The repo config (composed from conf/, every strategy and study: ``FULL_PROFILE``) pointed
    at ``root``, tiny graphs, one κ dataset."""
    from omegaconf import OmegaConf

    from kappaflow.config import compose

    cfg = compose(FULL_PROFILE)
    OmegaConf.resolve(cfg)
    cfg.graphs.cutoff = CUTOFF
    cfg.graphs.max_neighbors = MAX_NEIGHBORS
    cfg.registry.dataset = dataset
    # Fake fold models with made-up CV numbers and no baseline results: the gate is relaxed
    # explicitly, as smoke runs do (the gate itself: tests/registry/test_promotion.py and
    # test_register_stage.py::test_gate_blocks_a_candidate_that_loses_to_a_baseline).
    cfg.registry.gate.enforce = False
    cfg.screen.datasets = [dataset]
    cfg.screen.batch_size = 4
    cfg.screen.top_n = 3
    cfg.screen.device = "cpu"
    cfg.tracking.artifact_location = str(root / "mlruns")
    return cfg


def make_project(root: Path, dataset: str = "paraisite_d1") -> Any:
    """A scratch project under ``root``: dvc.yaml, a prepared κ set; returns its config.

    The caller must ``chdir`` into ``root`` (project_root() follows the cwd).
    """
    (root / "dvc.yaml").write_text("stages: {}\n")
    write_prepared(root, dataset, prepared_table(training_structures()))
    return tiny_cfg(root, dataset)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def enter_project(root: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """Make ``root`` a scratch project with its own MLflow store and chdir into it."""
    import shutil

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, root / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    cfg = make_project(root)
    monkeypatch.chdir(root)
    return root, cfg


@pytest.fixture()
def tiny_project(
    tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Any]:
    """A scratch project (the cwd) with one tiny prepared κ set, its config, own MLflow store.

    ``_migrated_mlflow_db`` (tests/conftest.py) is the store's migrated template.
    """
    return enter_project(tmp_path / "proj", _migrated_mlflow_db, monkeypatch)
