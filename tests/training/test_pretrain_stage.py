"""The data + pretrain stage functions end to end on a small real dataset (perovskites)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.data, pytest.mark.integration]


def test_ingest_prepare_featurize_pretrain(project):
    import mlflow

    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage
    from kappaflow.stages.pretrain import pretrain_stage
    from kappaflow.training.export import load_model

    root, cfg = project
    for name in ("perov5_val", "paraisite_d1"):
        ingest_stage(cfg, name)
        prepare_stage(cfg, name)
    report = json.loads((root / "data/interim/perov5_val/report.json").read_text())
    assert report["n_input"] == report["n_valid"] + report["n_quarantined"] == 3787
    featurize_stage(cfg, "perov5_val")
    assert (root / "data/graphs/perov5_val.pt").is_file()

    metrics = pretrain_stage(cfg, "tiny")
    saved = json.loads((root / "metrics/pretrain_tiny.json").read_text())
    assert saved["counts"] == metrics["counts"]
    counts = metrics["counts"]
    assert counts["train"] > 0 and counts["val"] > 0 and counts["test"] > 0
    assert counts["unused"] > counts["train"]  # fraction 0.3 leaves most training groups unused
    for target in ("heat_ref", "ind_gap"):
        assert {"mae", "rmse", "r2"} <= set(saved["test"][target])
        assert {"mae", "rmse", "r2"} <= set(saved["baseline_mean"][target])
    assert saved["epochs_trained"] == 2 and saved["seconds_per_epoch"] > 0

    # splits: grouped by formula, test never shares a formula with train
    splits = pd.read_csv(root / "data/splits/pretrain_tiny.csv", keep_default_na=False)
    train_f = set(splits.loc[splits.role == "train", "formula"])
    test_f = set(splits.loc[splits.role == "test", "formula"])
    assert not train_f & test_f

    # exported model reloads (weights_only) and reproduces the test metrics' predictions
    model, transform, info = load_model(root / "models/pretrain/tiny.pt")
    assert info["target_names"] == ["heat_ref", "ind_gap"]
    for png in ("learning_curve.png", "parity_heat_ref.png", "parity_ind_gap.png"):
        assert (root / "plots/pretrain/tiny" / png).stat().st_size > 1000
    hist = pd.read_csv(root / "plots/pretrain/tiny/history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss"] and len(hist) == 2

    # MLflow: params, per-epoch curves, dataset input, git/DVC tags, artifacts
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    pre = [r for r in runs if r.info.run_name == "pretrain·tiny"]
    assert len(pre) == 1
    run = pre[0]
    assert run.data.params["pretrain.fraction"] == "0.3"
    assert not [p for p in run.data.params if p.startswith(("datasets.paraisite", "tracking."))]
    assert run.data.tags["dvc.stage"] == "pretrain@tiny"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    assert np.isfinite(run.data.metrics["test_heat_ref_mae_eV"])
    assert not [k for k in run.data.metrics if "/" in k or "." in k]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["perov5_val"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "model", "config.yaml"} <= arts
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name.endswith("-pretrain")
    prep = [r for r in runs if r.info.run_name == "prepare·perov5_val"]
    assert prep and prep[0].data.params["n_valid"] == str(report["n_valid"])
    assert "n_valid" not in prep[0].data.metrics
