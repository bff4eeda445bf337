"""Sweeps on real configs: ``+experiment=smoke`` end to end, every README ``kappaflow sweep`` line.

The end-to-end runs use the scratch strategy (no pretrained export needed), one epoch per fold and
2 inner folds on D1, so each trial takes seconds on 2 CPU cores. They need the prepared graph
cache ``data/graphs/paraisite_d1.pt`` (``dvc repro``) and the real datasets; they skip without.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from sweep_testkit import sweep_study

from kappaflow.cli.sweep import parse_args
from kappaflow.cli.sweep import run as sweep_cli
from kappaflow.layout import project_root
from kappaflow.sweep.objective import ConfigSource
from kappaflow.sweep.settings import SweepSettings

#: Overrides that make a real trial cheap: tiny smoke config, scratch CGCNN, 1 epoch, 2 folds.
CHEAP = (
    "+experiment=smoke",
    "sweep.strategy=scratch",
    "sweep.inner.n_splits=2",
    "+sweep.trainer.max_epochs=1",
    "sweep.best_file=null",
)


def readme_sweep_lines() -> list[str]:
    """Every ``kappaflow sweep …`` command line of README.md (comments stripped)."""
    text = (project_root() / "README.md").read_text(encoding="utf-8")
    lines = re.findall(r"^\s*(kappaflow sweep(?:[ \t][^#\n]*)?)", text, flags=re.MULTILINE)
    lines += re.findall(r"`(kappaflow sweep(?: [^`\n]*)?)`", text)  # inline commands
    return list(dict.fromkeys(line.strip() for line in lines))


def cheap_words(line: str, storage: str, study: str) -> list[str]:
    """The README line's arguments with 1 trial, 1 worker, a test storage and a test study."""
    words = shlex.split(line)[2:]
    keep = [w for w in words if w.partition("=")[0] not in ("n_trials", "workers", "storage")]
    cheap = [c for c in CHEAP if c not in keep]
    return [*keep, "n_trials=1", "workers=1", f"storage={storage}", f"study={study}", *cheap]


@pytest.fixture()
def prepared_d1(real_data_root: Path) -> None:
    from kappaflow.config import compose
    from kappaflow.layout import graph_cache_path

    cache = graph_cache_path(compose(), "paraisite_d1")
    if not cache.is_file():
        pytest.skip(f"no graph cache {cache}: run `dvc repro` (graphs stage) first")


def test_readme_has_sweep_lines():
    lines = readme_sweep_lines()
    assert len(lines) >= 4, lines
    assert any("sweep=strategy" in line for line in lines)


@pytest.mark.parametrize("line", readme_sweep_lines())
def test_readme_sweep_line_parses_and_composes(line: str):
    overrides, options = parse_args(shlex.split(line)[2:])
    assert options["workers"] >= 1
    for extra in ((), CHEAP):  # as written, and as the cheap run below composes it
        cfg = ConfigSource(tuple(overrides)).load([e for e in extra if e not in overrides])
        settings = SweepSettings.from_cfg(cfg)
        assert settings.params and settings.n_trials >= 1


@pytest.mark.data
def test_smoke_experiment_sweep_runs_two_trials(
    tmp_path: Path, mlflow_db: str, prepared_d1: None, capsys: pytest.CaptureFixture[str]
):
    """Regression: a non-empty evaluation.trainer (smoke) made every trial fail (struct merge)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    words = ["n_trials=2", f"storage={url}", "study=smoke_e2e", *CHEAP]
    assert sweep_cli(words) == 0, capsys.readouterr().out
    trials = sweep_study("smoke_e2e", url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(0.0 < t.value < 10.0 for t in trials)  # decades of κ
    assert trials[0].user_attrs["strategy"] == "scratch"


@pytest.mark.data
@pytest.mark.parametrize("line", readme_sweep_lines())
def test_readme_sweep_line_runs_one_trial(
    line: str, tmp_path: Path, mlflow_db: str, prepared_d1: None, capsys
):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert sweep_cli(cheap_words(line, url, "readme_line")) == 0, capsys.readouterr().out
    trials = sweep_study("readme_line", url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"]
