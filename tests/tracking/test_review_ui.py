"""Runs a reviewer can read: real stages into an embedded server, checked in Chromium.

1. ``kappaflow server`` (embedded: SQLite + local artifacts, no auth) on a free port.
2. The real stage functions on a tiny project (``paraisite_d1`` + a tiny pretraining on
   ``perov5_val``; finetune ``scratch`` and ``finetune`` on 2 folds; ``evaluate``) log to it.
3. The API shows what a reviewer needs: one experiment per purpose tagged as model training,
   short run names, only the params a stage reads, one metric scheme without slashes, learning
   curves on every fold run, the ``evaluate`` run's per strategy × dataset headline.
4. Headless Chromium screenshots (``$KAPPAFLOW_TEST_ARTIFACTS/ui/`` or ``reports/ui/``): the
   experiments list, the transfer runs table with metric columns, the chart view comparing the
   strategies, a fine-tune fold run's learning curves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import server_testkit as kit

from stage_testkit import TINY_PRETRAIN, full_profile_params, prepare_tiny_pretrained

pytestmark = [
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.data,
    pytest.mark.integration,
    pytest.mark.slow,
]

PREFIX = "kappaflow"
STRATEGIES = ("scratch", "finetune")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("embedded")
    port = kit.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = [
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--no-auth",
    ]
    with kit.server_process(args, env, root / "server.log", url):
        yield url


@pytest.fixture(scope="module")
def logged(server: str, real_data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run the real stages against the server; return the config and a client."""
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from kappaflow.config import load_params
    from kappaflow.stages.evaluate import evaluate_stage
    from kappaflow.stages.finetune import finetune_stage

    proj = tmp_path_factory.mktemp("project")
    params = full_profile_params(proj / "params.yaml")
    (proj / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        mp.setenv("KAPPAFLOW_DATA_DIR", str(real_data_root))
        mp.setenv("MLFLOW_TRACKING_URI", server)
        cfg = load_params(params, [f"paths.data_root={real_data_root}", *TINY_PRETRAIN])
        prepare_tiny_pretrained(cfg)
        cfg.transfer.strategies = {s: cfg.transfer.strategies[s] for s in STRATEGIES}
        cfg.transfer.strategies.finetune.pretrained = "tiny"
        cfg.evaluation.datasets = ["paraisite_d1"]
        cfg.evaluation.n_splits, cfg.evaluation.n_repeats = 2, 1
        cfg.evaluation.baselines = ["median"]
        cfg.evaluation.other_targets = []
        cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 4, "limit_train_batches": 4})
        for strategy in STRATEGIES:
            finetune_stage(cfg, strategy, "paraisite_d1")
        evaluate_stage(cfg)
    return cfg, MlflowClient(tracking_uri=server)


def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    return client.search_runs([exp.experiment_id], max_results=200)


def test_experiments_per_purpose_tagged_as_model_training(logged: tuple[Any, Any]) -> None:
    _, client = logged
    for purpose in ("data", "pretrain", "transfer"):
        exp = client.get_experiment_by_name(f"{PREFIX}-{purpose}")
        assert exp is not None, purpose
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    data = {r.info.run_name for r in _runs(client, f"{PREFIX}-data")}
    assert {"ingest·D1", "prepare·D1", "featurize·D1", "prepare·perov5_val"} <= data
    assert {r.info.run_name for r in _runs(client, f"{PREFIX}-pretrain")} == {"pretrain·tiny"}


def test_transfer_runs_log_what_a_reviewer_compares(logged: tuple[Any, Any]) -> None:
    _, client = logged
    runs = _runs(client, f"{PREFIX}-transfer")
    by_name = {r.info.run_name: r for r in runs}
    for strategy in STRATEGIES:
        run = by_name[f"finetune·D1·{strategy}"]
        m, p = run.data.metrics, run.data.params
        assert {"log10_mae_mean", "log10_mae_std", "mape_mean", "spearman_mean"} <= set(m)
        assert "n_folds" in p and "n_folds" not in m  # counts are params
        assert f"transfer.strategies.{strategy}.name" in p and "evaluation.n_splits" in p
        assert not [k for k in p if k.startswith(("datasets.", "tracking.", "pretrain.runs"))]
        assert len(p) < 120, len(p)  # not the 565 keys of the whole config
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(r.info.run_name for r in folds) == [
            f"fold·D1·{strategy}·r0f0",
            f"fold·D1·{strategy}·r0f1",
        ]
        for fold in folds:  # every fold model has learning curves and its test metrics
            for key in ("train_loss", "val_loss", "val_log10_mae"):
                hist = client.get_metric_history(fold.info.run_id, key)
                assert [h.step for h in hist] == [0, 1, 2, 3], (fold.info.run_name, key)
            assert "test_log10_mae" in fold.data.metrics and "n_test" in fold.data.params
    for run in runs:  # one scheme: no slashes, no counts
        assert not [k for k in run.data.metrics if "/" in k and not k.startswith("system/")]
        assert not [k for k in run.data.metrics if k == "n" or k.startswith("n_")]
    ev = by_name["evaluate"].data.metrics
    for strategy in STRATEGIES:
        for key in ("log10_mae_mean", "log10_mae_std", "mape_mean", "spearman_mean"):
            assert f"D1_{strategy}_{key}" in ev, (strategy, key)
    assert "D1_baseline_median_log10_mae_mean" in ev  # (a constant has no finite Spearman ρ)


def test_pretrain_run_names_test_metrics_with_units(logged: tuple[Any, Any]) -> None:
    _, client = logged
    (run,) = _runs(client, f"{PREFIX}-pretrain")
    m = run.data.metrics
    assert "test_heat_ref_mae_eV" in m and "best_val_loss" in m
    assert not [k for k in m if k.startswith(("best/", "test/", "test."))]  # test logged once
    assert {"train_loss", "val_loss"} <= set(m)
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def _screenshot(driver: Any, name: str) -> Path:
    path = kit.artifacts_dir() / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def _click_text(driver: Any, text: str, timeout_s: float = 30) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for el in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']"):
            if el.is_displayed():
                driver.execute_script("arguments[0].click();", el)
                return
        time.sleep(0.5)
    pytest.fail(f"nothing labelled {text!r} to click at {driver.current_url}")


def test_ui_screenshots_for_review(server: str, logged: tuple[Any, Any]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, client = logged
    exp = client.get_experiment_by_name(f"{PREFIX}-transfer")
    runs = _runs(client, f"{PREFIX}-transfer")
    fold = next(r for r in runs if r.info.run_name == "fold·D1·finetune·r0f1")
    driver = kit.chromium(size=(1600, 1000))
    try:
        driver.get(f"{server}/health")  # quiet the assistant panel before the app loads
        driver.execute_script(
            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        driver.get(f"{server}/#/experiments")
        kit.wait_for_texts(driver, [f"{PREFIX}-data", f"{PREFIX}-pretrain", f"{PREFIX}-transfer"])
        time.sleep(1)
        _screenshot(driver, "review_experiments.png")

        # no GenAI view: the experimentKind tag opens the runs table directly
        driver.get(f"{server}/#/experiments/{exp.experiment_id}/runs")
        kit.wait_for_texts(driver, ["finetune·D1·scratch", "finetune·D1·finetune"])
        # MLflow shows no metric column until one is picked (Columns → Metrics)
        _click_text(driver, "Columns")
        time.sleep(1)
        for metric in ("log10_mae_mean", "log10_mae_std", "mape_mean", "spearman_mean"):
            _click_text(driver, metric)
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        kit.wait_for_texts(driver, ["log10_mae_mean"])
        time.sleep(2)
        _screenshot(driver, "review_transfer_runs.png")

        driver.get(f"{server}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART")
        kit.wait_for_texts(driver, ["log10_mae_mean", "D1_finetune_log10_mae_mean"], 90)
        search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        search.send_keys("log10_mae_mean")  # the strategies side by side
        time.sleep(3)
        _screenshot(driver, "review_strategy_chart.png")

        driver.get(
            f"{server}/#/experiments/{exp.experiment_id}/runs/{fold.info.run_id}/model-metrics"
        )
        kit.wait_for_texts(driver, ["fold·D1·finetune·r0f1", "lr_head"], 90)
        search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        search.send_keys("loss")  # the learning curves: train_loss, val_loss
        kit.wait_for_texts(driver, ["train_loss", "val_loss"], 60)
        time.sleep(3)
        _screenshot(driver, "review_fold_curves.png")
    finally:
        driver.quit()
