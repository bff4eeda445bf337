import subprocess
from pathlib import Path

import kappa_testkit as kt
import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kappaflow.tracking import (
    file_sha256,
    log_dataset,
    log_params,
    start_stage_run,
    tracking_uri,
)
from kappaflow.tracking.runs import artifact_location, flatten_params
from kappaflow.training.mlflow_logger import MlflowEpochLogger, log_fit_result


def _cfg(**tracking):
    return OmegaConf.create(
        {
            "seed": 3,
            "trainer": {"seed": "${seed}", "max_epochs": 2, "note": "x" * 7000},
            "tracking": {"experiment": "test-exp", "uri": None, **tracking},
        }
    )


@pytest.fixture()
def git_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A throw-away project root (pyproject.toml) that is a git repo with one commit."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "."], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-q", "-m", "init"], check=True)
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(root)
    return root, sha


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch, git_project) -> None:
    root, _ = git_project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(_cfg()) == f"sqlite:///{root / 'mlflow.db'}"
    assert tracking_uri(_cfg(uri="sqlite:///other.db")) == "sqlite:///other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_uri(_cfg(uri="sqlite:///other.db")) == "sqlite:///env.db"
    assert artifact_location(_cfg()) == (root / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert artifact_location(_cfg()) is None


def test_params_are_flattened_and_truncated() -> None:
    flat = flatten_params(_cfg())
    assert flat["trainer.seed"] == "3" and flat["tracking.uri"] == "null"
    assert len(flat["trainer.note"]) == 6000


def test_stage_run_tags_params_artifact_dataset(
    mlflow_db: str, git_project, tmp_path: Path
) -> None:
    _, sha = git_project
    table = tmp_path / "valid.parquet"
    pd.DataFrame({"id": ["a", "b"], "kappa": [1.0, 2.0], "numbers": [[1, 2], [3]]}).to_parquet(
        table
    )
    rid_file = tmp_path / "run_id"
    with start_stage_run(
        _cfg(),
        "finetune",
        dvc_stage="finetune@cgcnn",
        run_id_file=rid_file,
        params=["trainer", "seed"],
        drop_params=["trainer.note"],
        extra_params={"n_rows": 2},
    ) as run:
        log_dataset(table, "tiny", context="train", targets="kappa")
        log_params({f"extra.p{i}": i for i in range(150)})  # > one 100-param batch
        run_id = run.info.run_id
    client = mlflow.MlflowClient()
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["git.commit"] == sha == got.data.tags["mlflow.source.git.commit"]
    assert got.data.tags["git.dirty"] == "false"
    assert got.data.tags["dvc.stage"] == "finetune@cgcnn"
    assert got.data.tags["kappaflow.stage"] == "finetune"
    assert got.data.params["trainer.seed"] == "3" and got.data.params["extra.p149"] == "149"
    assert got.data.params["seed"] == "3" and got.data.params["n_rows"] == "2"
    # only the subtrees the stage reads: no tracking.*, no dropped keys
    assert not [k for k in got.data.params if k.startswith(("tracking.", "trainer.note"))]
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
    text = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    assert OmegaConf.create(text).trainer.seed == 3
    (inp,) = got.inputs.dataset_inputs
    digest = file_sha256(table)
    assert inp.dataset.name == "tiny" and inp.dataset.digest == digest[:36]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train"
    assert rid_file.read_text().strip() == run_id
    # a crashed stage re-run continues the same MLflow run
    with start_stage_run(_cfg(), "finetune", run_id_file=rid_file) as again:
        assert again.info.run_id == run_id
    assert len(mlflow.search_runs(experiment_names=["test-exp-transfer"])) == 1
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "test-exp-transfer"  # finetune runs go to the transfer experiment
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiments_per_purpose_and_run_names(mlflow_db: str, git_project) -> None:
    from kappaflow.tracking import experiment_name, run_label, setup_experiment
    from kappaflow.tracking.names import dataset_alias, metric_key

    cfg = _cfg(experiments={"registry": "team-models"})
    assert experiment_name(cfg, "data") == "test-exp-data"
    assert experiment_name(cfg, "registry") == "team-models"
    with pytest.raises(ValueError, match="unknown experiment purpose"):
        experiment_name(cfg, "misc")
    # an existing experiment without the kind tag gets it
    client = mlflow.MlflowClient(tracking_uri(cfg))
    old = client.create_experiment("test-exp-sweeps")
    assert setup_experiment(cfg, "sweeps") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    aliases = {"paraisite_d2": "D2"}
    assert run_label("finetune", dataset_alias("paraisite_d2", aliases), "freeze") == (
        "finetune·D2·freeze"
    )
    assert run_label("prepare", dataset_alias("scan_pool", aliases)) == "prepare·scan_pool"
    assert metric_key("val/kappa/mae_log10") == "val_log10_mae"
    assert metric_key("test/e_form/mae", {"e_form": "eV/atom"}) == "test_e_form_mae_eV_per_atom"
    assert metric_key("val/kappa/mae", {"kappa": "W/m/K"}) == "val_kappa_mae_W_per_mK"
    assert metric_key("lr/head") == "lr_head" and metric_key("train/loss") == "train_loss"


def test_disabled_tracking_yields_none(mlflow_db: str) -> None:
    with start_stage_run(_cfg(enabled=False), "x") as run:
        assert run is None


def test_epoch_curves_and_fit_summary(mlflow_db: str, tmp_path: Path) -> None:
    cfg = kt.trainer_cfg(max_epochs=3)
    tracking = {"experiment": "curves", "artifact_location": str(tmp_path / "mlruns")}
    with start_stage_run(
        OmegaConf.create({"trainer": cfg, "tracking": tracking}), "pretrain"
    ) as run:
        res = kt.run_training(tmp_path / "run", cfg, callbacks=[MlflowEpochLogger()])
        log_fit_result(res)
    client = mlflow.MlflowClient()
    rid = run.info.run_id
    for key in ("train_loss", "val_loss", "val_kappa_mae_W_per_mK", "val_log10_mae", "lr_head"):
        hist = client.get_metric_history(rid, key)
        assert [m.step for m in hist] == [0, 1, 2], key
    val = [m.value for m in client.get_metric_history(rid, "val_loss")]
    assert min(val) == pytest.approx(res.best_val_loss)
    data = client.get_run(rid).data
    assert not [k for k in data.metrics if "/" in k]  # slash names make one-bar chart sections
    assert data.metrics["best_val_loss"] == pytest.approx(res.best_val_loss)
    assert data.metrics["best_val_log10_mae"] == pytest.approx(
        res.val_metrics["val/kappa/mae_log10"]
    )
    assert not [k for k in data.metrics if k.startswith("best_test")]  # the stage logs test once
    assert data.tags["epochs_trained"] == "3" and "epochs_trained" not in data.metrics
    arts = [a.path for a in client.list_artifacts(rid, "checkpoints")]
    assert arts == [f"checkpoints/{res.best_ckpt.name}"]
    assert (tmp_path / "mlruns" / rid / "artifacts" / arts[0]).is_file()
