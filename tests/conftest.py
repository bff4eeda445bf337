"""Shared fixtures: real-data root, isolated MLflow store, quiet telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The curated datasets (``KAPPAFLOW_DATA_DIR`` or ``../shared/data``); skip if absent."""
    from kappaflow.paths import data_root

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
