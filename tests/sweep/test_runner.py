"""Runner in one process: resume tops up, seeded TPE, MLflow runs, the best experiment file."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState
from sweep_testkit import LR, quadratic, sweep_overrides, sweep_study, trial_runs

from kappaflow.sweep.objective import ConfigSource
from kappaflow.sweep.runner import METRIC_NAME, run_sweep


def test_resume_tops_the_study_up(tmp_path: Path, mlflow_db: str):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = run_sweep(ConfigSource(sweep_overrides("resume", 2)), storage=url, objective=quadratic)
    assert first.states == {"COMPLETE": 2}
    trial0 = sweep_study("resume", url).trials[0]
    assert sweep_study("resume", url).metric_names == [METRIC_NAME]  # not "Objective 0"
    assert trial0.user_attrs["baseline"] and trial0.params[LR] == 0.001  # the config's defaults
    again = run_sweep(ConfigSource(sweep_overrides("resume", 4)), storage=url, objective=quadratic)
    trials = sweep_study("resume", url).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(w.states["COMPLETE"] for w in again.workers) == 2  # 2 new, 2 kept
    assert again.best_number == 0 and again.baseline_value == pytest.approx(0.0)
    runs = trial_runs(mlflow_db, "resume")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2, 3]
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1  # one parent per study
    assert {r.data.tags["optuna.state"] for r in runs} == {"COMPLETE"}
    assert runs[0].data.params[LR]


def test_seeded_tpe_reproduces_its_first_suggestions(tmp_path: Path, mlflow_db: str):
    def params(name: str, seed: int) -> list[float]:
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        extra = ("sweep.enqueue_defaults=false", f"sweep.seed={seed}", "tracking.enabled=false")
        run_sweep(ConfigSource(sweep_overrides(name, 4, *extra)), storage=url, objective=quadratic)
        return [t.params[LR] for t in sweep_study(name, url).trials]

    first = params("seeded_a", 7)
    assert first == params("seeded_b", 7)
    assert first != params("seeded_c", 8)


def test_best_file_composes_to_the_best_params(tmp_path, monkeypatch, mlflow_db, capsys):
    from kappaflow.cli import main
    from kappaflow.config import compose
    from kappaflow.layout import project_root

    shutil.copytree(project_root() / "conf", tmp_path / "conf")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)  # a project copy: the best file lands in its conf/experiment
    assert project_root() == tmp_path
    overrides = [o for o in sweep_overrides("best_test", 3) if "best_file" not in o]
    report = run_sweep(ConfigSource(tuple(overrides)), objective=quadratic)
    assert report.storage.endswith(f"{tmp_path}/optuna.db")  # relative default: project root
    best_file = tmp_path / "conf/experiment/best_best_test.yaml"
    assert report.best_file == str(best_file)
    assert best_file.read_text().startswith("# @package _global_")
    assert main(["config", "dump", "+experiment=best_best_test"]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    composed = compose(["+experiment=best_best_test"])
    from dvc.utils.hydra import compose_and_dump  # what `dvc exp run -S +experiment=...` runs

    compose_and_dump(
        tmp_path / "params.yaml", str(tmp_path / "conf"), None, "config", str(tmp_path),
        ["+experiment=best_best_test"],
    )  # fmt: skip
    dvc_params = OmegaConf.load(tmp_path / "params.yaml")
    assert report.best_overrides
    # the default profile selects the stack alone: the file composes the tuned recipe whole
    assert "  - /transfer/finetune@transfer" in best_file.read_text()
    assert composed.transfer.strategies.finetune.model == "cgcnn"
    assert list(composed.transfer.strategies) == ["sevennet_stack", "finetune"]
    for path, value in report.best_overrides.items():
        assert OmegaConf.select(OmegaConf.create(dumped), path) == value
        assert OmegaConf.select(composed, path) == value
        assert OmegaConf.select(dvc_params, path) == value


def test_strategy_best_file_keeps_sweep_keys_as_comments(tmp_path, monkeypatch):
    from kappaflow.config import compose
    from kappaflow.layout import project_root
    from kappaflow.sweep.best import write_best_experiment

    shutil.copytree(project_root() / "conf", tmp_path / "conf")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    best = {
        "sweep.strategy": "freeze",
        "transfer.strategies.freeze.trainer.optim.lr": 1.2345678e-05,
        "transfer.strategies.freeze.unfreeze_last_k": 2,
    }
    study = optuna.create_study(study_name="s")
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"overrides": best}))
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs={"baseline": True}))
    path = write_best_experiment(study, tmp_path / "conf/experiment/best_s.yaml")
    text = path.read_text()
    assert "# sweep setting of the best trial (not applied here): sweep.strategy=freeze" in text
    assert "baseline (config defaults) 0.7000" in text
    cfg = compose(["+experiment=best_s"])
    assert cfg.transfer.strategies.freeze.trainer.optim.lr == 1.2345678e-05
    assert cfg.transfer.strategies.freeze.unfreeze_last_k == 2
    assert cfg.sweep.strategy == "finetune"  # sweep keys do not leak into the pipeline config
