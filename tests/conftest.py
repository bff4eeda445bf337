"""Shared fixtures: real-data root, isolated MLflow stores, quiet telemetry.

The testkit folders (``tests/training``, ``tests/registry``, ``tests/sweep``) are on ``sys.path``
through pytest's ``pythonpath`` option (pyproject.toml): their ``*_testkit`` modules are imported
by name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stage_testkit import TINY_PRETRAIN, full_profile_params

#: Crystal fixtures shared by tests/structure and tests/graphs.
pytest_plugins = ["crystal_fixtures"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The curated datasets (``KAPPAFLOW_DATA_DIR`` or ``../shared/data``); skip if absent."""
    from kappaflow.layout import data_root

    root = data_root()
    if not (root / "MANIFEST.json").is_file():
        pytest.skip(f"real datasets not found at {root} (set KAPPAFLOW_DATA_DIR); CI provides them")
    return root


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test, exported as ``MLFLOW_TRACKING_URI``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with the schema migrations applied (done once: ~2-7 s)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def mlflow_db(_migrated_mlflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh per-test SQLite store (copy of the migrated template) as ``MLFLOW_TRACKING_URI``.

    ``KAPPAFLOW_SWEEP_STORAGE`` is cleared, so sweeps use the storage a test names.
    """
    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KAPPAFLOW_SWEEP_STORAGE", raising=False)
    return uri


@pytest.fixture()
def project(tmp_path: Path, real_data_root: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str):
    """A scratch project dir (own data/, models/, mlflow.db) with the repo's params, tiny models."""
    from kappaflow.config import load_params

    params = full_profile_params(tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAPPAFLOW_DATA_DIR", str(real_data_root))
    cfg = load_params(params, [f"paths.data_root={real_data_root}", *TINY_PRETRAIN])
    return tmp_path, cfg
