"""Ground floor: where everything lives on disk, and how a dataset is looked up.

Every layer may import this module; it imports only :mod:`kappaflow.cards` (the dataset-card
schema) and third-party libraries. It owns:

* the project root and the raw-data root (``KAPPAFLOW_DATA_DIR`` > ``paths.data_root`` >
  ``../shared/data``), checked against what DVC tracks (:func:`resolved_data_root`);
* the pipeline's folders: ``data/raw/<name>.csv.gz``, ``data/interim/<name>/`` (prepared table,
  quarantine, report), ``data/graphs/<name>.pt``;
* dataset lookup (:func:`dataset_spec`), the learned target of a dataset (:func:`target_name`)
  and the κ table reader (:func:`kappa_table`, κ in W/m/K).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from kappaflow.cards import DatasetSpec, spec_from_cfg

DATA_ENV_VAR = "KAPPAFLOW_DATA_DIR"
DEFAULT_DATA_ROOT = "../shared/data"
#: File names inside ``data/interim/<name>/`` (written by :mod:`kappaflow.data.prepare`).
VALID_FILE = "valid.parquet"
QUARANTINE_FILE = "quarantine.csv"
REPORT_FILE = "report.json"


def project_root() -> Path:
    """Return the project root: nearest ancestor of the cwd with ``dvc.yaml``/``pyproject.toml``.

    Falls back to the repository that contains this package (editable installs), then to the cwd.
    """
    for base in (Path.cwd(), Path(__file__).resolve().parent):
        for candidate in (base, *base.parents):
            if (candidate / "dvc.yaml").is_file() or (candidate / "pyproject.toml").is_file():
                return candidate
    return Path.cwd()


def data_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute directory that holds the raw datasets.

    Args:
        configured: value of ``paths.data_root`` from the config, if any. A relative path is taken
            relative to :func:`project_root`.

    Returns:
        Absolute path. ``KAPPAFLOW_DATA_DIR`` wins over ``configured`` when set.
    """
    raw = os.environ.get(DATA_ENV_VAR) or configured or DEFAULT_DATA_ROOT
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return path.resolve()


def resolved_data_root(cfg: DictConfig) -> Path:
    """Return the data root DVC tracks (``paths.data_root``), checked against the env var.

    Raises:
        ValueError: if ``KAPPAFLOW_DATA_DIR`` is set to a different directory than
            ``paths.data_root``: DVC would record hashes of files the stage did not read.
    """
    configured = (project_root() / cfg.paths.data_root).resolve()
    effective = data_root(cfg.paths.data_root)
    if effective != configured:
        raise ValueError(
            f"{DATA_ENV_VAR}={effective} differs from paths.data_root={configured}. DVC tracks "
            f"paths.data_root; run `dvc exp run -S paths.data_root={effective}` instead "
            f"(or unset {DATA_ENV_VAR})."
        )
    return configured


def dataset_spec(cfg: DictConfig, name: str) -> DatasetSpec:
    """Return the dataset card ``name`` from the config (``KeyError`` lists the known names)."""
    if name not in cfg.datasets:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(cfg.datasets)}")
    return spec_from_cfg(cfg.datasets[name], name)


def raw_path(cfg: DictConfig, name: str) -> Path:
    """``data/raw/<name>.csv.gz``: the DVC-tracked copy of the raw table."""
    return project_root() / cfg.paths.raw_dir / f"{name}.csv.gz"


def interim_dir(cfg: DictConfig, name: str) -> Path:
    """``data/interim/<name>/``: prepared table, quarantine and report."""
    return project_root() / cfg.paths.interim_dir / name


def graph_cache_path(cfg: DictConfig, name: str) -> Path:
    """``data/graphs/<name>.pt``: the cached crystal graphs of dataset ``name``."""
    return project_root() / cfg.paths.graphs_dir / f"{name}.pt"


def baseline_dir(cfg: DictConfig, baseline: str, dataset: str) -> Path:
    """``models/baselines/<baseline>/<dataset>/``: a baseline's CV record (``cv.json``) on a set."""
    return project_root() / cfg.paths.models_dir / "baselines" / baseline / dataset


def finetune_dir(cfg: DictConfig, strategy: str, dataset: str) -> Path:
    """``models/finetune/<strategy>/<dataset>/``: a strategy's CV record, predictions, folds."""
    return project_root() / cfg.paths.models_dir / "finetune" / strategy / dataset


def load_prepared(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``out_dir/valid.parquet`` (structure columns hold numpy arrays, or None).

    Raises:
        FileNotFoundError: the dataset was not prepared (names the command that prepares it).
    """
    path = Path(out_dir) / VALID_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no prepared table at {path}; run prepare first (`dvc repro prepare`)"
        )
    return pd.read_parquet(path)


def load_quarantine(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``out_dir/quarantine.csv`` (columns ``row, id, reason, detail``; ids stay text)."""
    return pd.read_csv(
        Path(out_dir) / QUARANTINE_FILE,
        dtype={"row": "int64", "id": str, "reason": str, "detail": str},
        keep_default_na=False,
        na_filter=False,
    )


def target_name(cfg: DictConfig, dataset: str) -> str:
    """Return the learned target: the κ target (unit W/m/K), else the first log10 target.

    A set without κ (e.g. ``matbench_dielectric``: refractive index, TL-CGCNN's non-κ transfer
    check) must have a positive target, learned as log10 like κ.

    Raises:
        ValueError: neither a κ nor a positive (log10) target.
    """
    spec = dataset_spec(cfg, dataset)
    kappa_targets = [t.name for t in spec.targets if t.unit == "W/m/K"]
    positive = [t.name for t in spec.targets if t.transform == "log10"]
    if not kappa_targets and not positive:
        raise ValueError(
            f"dataset {dataset!r} has no κ target (unit W/m/K) nor a positive (log10) target: "
            f"{spec.target_names}"
        )
    return (kappa_targets or positive)[0]


def with_structures(cfg: DictConfig, dataset: str, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of ``dataset``, any order) with the prepared structures' columns added.

    Adds ``lattice`` (Å), ``numbers`` and ``frac_coords`` from ``data/interim/<dataset>``, row for
    row (models that build their own input graphs from the structures need them).

    Raises:
        KeyError: an id of ``table`` is not among the dataset's prepared rows.
    """
    cols = ["lattice", "numbers", "frac_coords"]
    prepared = load_prepared(interim_dir(cfg, dataset)).drop_duplicates("id").set_index("id")
    ids = table["id"].astype(str)
    missing = sorted(set(ids) - set(prepared.index.astype(str)))
    if missing:
        raise KeyError(f"{dataset}: ids {missing[:3]} are not prepared rows (stale table?)")
    prepared.index = prepared.index.astype(str)
    out = table.drop(columns=[c for c in cols if c in table.columns]).copy()
    for c in cols:
        out[c] = prepared.loc[ids, c].to_numpy()
    return out


def kappa_table(cfg: DictConfig, dataset: str) -> tuple[pd.DataFrame, str]:
    """Return the prepared rows of a dataset with its target (:func:`target_name`) as ``kappa``.

    Returns:
        ``(table, target_name)`` with columns ``id, formula, spacegroup, kappa`` (κ in W/m/K, or
        the positive target's unit; plus the target under its own name when that is not
        ``kappa``: graph caches store it so).
    """
    name = target_name(cfg, dataset)
    table = load_prepared(interim_dir(cfg, dataset))
    table = table.loc[table[name].notna()].reset_index(drop=True)
    table = table[["id", "formula", "spacegroup", name]].copy()
    table["kappa"] = table[name]
    return table[list(dict.fromkeys(["id", "formula", "spacegroup", "kappa", name]))], name
