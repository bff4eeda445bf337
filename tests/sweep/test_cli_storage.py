"""`kappaflow sweep` argument parsing and storage URLs / study locks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kappaflow.cli.sweep import parse_args
from kappaflow.layout import project_root
from kappaflow.sweep.storage import (
    StorageError,
    redact,
    resolve_url,
    storage_kind,
    study_lock,
    supports_heartbeat,
)


def test_parse_args_splits_shorthands_from_hydra_overrides():
    overrides, options = parse_args(
        [
            "sweep=strategy",
            "n_trials=12",
            "study=s1",
            "storage=postgresql+psycopg2://u:pw@db:5432/optuna",
            "workers=2",
            "rank=4",
            "sweep.inner.n_splits=5",
        ]
    )
    assert overrides == [
        "sweep=strategy",
        "sweep.n_trials=12",
        "sweep.study_name=s1",
        "sweep.inner.n_splits=5",
    ]
    assert options == {
        "storage": "postgresql+psycopg2://u:pw@db:5432/optuna",
        "workers": 2,
        "rank": 4,
    }


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["workers=0"], "workers must be >= 1"),
        (["n_trials=-1"], "n_trials must be >= 0"),
        (["n_trials=ten"], "n_trials must be an integer"),
        (["strategy"], "not of the form key=value"),
    ],
)
def test_parse_args_rejects_bad_words(words, message):
    with pytest.raises(ValueError, match=message):
        parse_args(words)


def test_storage_urls():
    assert storage_kind("sqlite:///optuna.db") == "sqlite"
    assert storage_kind("postgresql+psycopg2://u@h:1/db") == "postgresql"
    assert storage_kind("journal:/tmp/x.journal") == "journal"
    assert supports_heartbeat("sqlite:///x.db") and not supports_heartbeat("journal:x")
    with pytest.raises(StorageError, match="unsupported sweep storage 'mysql://u:\\*\\*\\*@h/db'"):
        storage_kind("mysql://u:secret@h/db")
    with pytest.raises(StorageError, match="journal:<path>"):
        storage_kind("journal:")
    root = project_root()
    assert resolve_url("sqlite:///optuna.db") == f"sqlite:///{root / 'optuna.db'}"
    assert resolve_url("sqlite:////abs/o.db") == "sqlite:////abs/o.db"
    assert resolve_url("journal:runs/o.journal") == f"journal:{root / 'runs/o.journal'}"
    assert "secret" not in redact("postgresql+psycopg2://u:secret@h:5432/optuna")


def test_study_lock_excludes_a_second_holder(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    inside, release, outcome = threading.Event(), threading.Event(), {}

    def holder():
        with study_lock(url, "s"):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(10)
    try:
        with study_lock(url, "s", timeout_s=0.3):
            outcome["second"] = "entered"
    except TimeoutError as exc:
        outcome["second"] = str(exc)
    release.set()
    thread.join()
    assert "could not lock study 's'" in outcome["second"]
    with study_lock(url, "s", timeout_s=1):  # free again
        pass
