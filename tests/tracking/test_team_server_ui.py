"""Team mode end to end: PostgreSQL + basic auth server, a real pipeline run, the UI in Chromium.

1. ``scripts/postgres.sh`` starts PostgreSQL; ``kappaflow server --team`` starts MLflow on it
   (loopback, auth, server-side artifacts); ``kappaflow server add-user`` creates a user.
2. Unauthenticated and wrong-password requests get 401.
3. The real stage functions (ingest → prepare → featurize → finetune ``scratch`` on
   ``paraisite_d1``, tiny settings → register) log to the server as that user, through nothing
   but ``MLFLOW_TRACKING_URI`` / ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
4. Headless Chromium shows the experiment, the run's metrics and the registered model with alias
   ``champion`` (screenshots in ``reports/ui/`` or ``$KAPPAFLOW_TEST_ARTIFACTS/ui/``).
5. ``dvc plots show`` of the repo's parity plot renders offline (no host name resolves).
6. SIGTERM stops the server cleanly (exit 0, no process left).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import server_testkit as kit

from stage_testkit import full_profile_params

pytestmark = [
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.data,
    pytest.mark.integration,
    pytest.mark.slow,
]

USER = "alice"
MODEL_OVERRIDES = [
    "models.cgcnn.atom_fea_len=16",
    "models.cgcnn.n_conv=1",
    "models.cgcnn.h_fea_len=32",
    "trainer.progress_bar=none",
]
PARITY_PLOT = "kappa_parity_paraisite_d1"


@dataclass
class Team:
    """The running team server and who may use it."""

    url: str
    process: subprocess.Popen[bytes]
    startup_s: float
    admin_password: str
    user_password: str
    root: Path
    log: Path
    tree: list[int] = field(default_factory=list)


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    import base64

    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    root = tmp_path_factory.mktemp("team")
    admin_pw, user_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    with kit.postgres() as pg_url:
        port = kit.free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {
            "KAPPAFLOW_MLFLOW_BACKEND_URI": pg_url,
            "KAPPAFLOW_MLFLOW_ARTIFACTS": str(root / "artifacts"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
        }
        log = root / "server.log"
        with kit.server_process(["--team", "--port", str(port)], env, log, url) as (proc, t):
            kit.record_timing("team_startup_s", round(t, 1))
            server = Team(url, proc, t, admin_pw, user_pw, root, log, kit.process_tree(proc.pid))
            kit.record_timing("team_rss_mb", round(kit.tree_rss_mb(proc.pid)))
            from kappaflow.cli import main

            with pytest.MonkeyPatch.context() as mp:  # `kappaflow server add-user`, as the admin
                mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
                mp.setenv("MLFLOW_TRACKING_PASSWORD", admin_pw)
                mp.setenv("KAPPAFLOW_NEW_USER_PASSWORD", user_pw)
                assert main(["server", "add-user", USER, "--url", url]) == 0
            yield server


@pytest.fixture(scope="module")
def pipeline(team: Team, real_data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run the real stage functions against the server as ``alice``; return what they logged."""
    from omegaconf import OmegaConf

    from kappaflow.config import load_params
    from kappaflow.stages.evaluate import evaluate_stage
    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.finetune import finetune_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage
    from kappaflow.stages.register import register_stage

    proj = tmp_path_factory.mktemp("project")
    params = full_profile_params(proj / "params.yaml")
    (proj / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        mp.setenv("KAPPAFLOW_DATA_DIR", str(real_data_root))
        mp.setenv("MLFLOW_TRACKING_URI", team.url)
        mp.setenv("MLFLOW_TRACKING_USERNAME", USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team.user_password)
        cfg = load_params(params, [f"paths.data_root={real_data_root}", *MODEL_OVERRIDES])
        cfg.evaluation.n_splits, cfg.evaluation.n_repeats = 2, 1
        cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 2})
        cfg.registry.dataset = "paraisite_d1"
        cfg.registry.exclude_strategies = []  # scratch is the one strategy run here
        cfg.registry.gate.enforce = False  # 2-epoch scratch loses to the baselines: relaxed
        cfg.transfer.strategies = {"scratch": cfg.transfer.strategies.scratch}
        cfg.evaluation.datasets = ["paraisite_d1"]
        cfg.evaluation.other_targets = []
        t0 = time.perf_counter()
        seconds = {}
        for stage in (ingest_stage, prepare_stage, featurize_stage):
            stage(cfg, "paraisite_d1")
            seconds[stage.__name__] = round(time.perf_counter() - t0, 1)
        cv = finetune_stage(cfg, "scratch", "paraisite_d1")
        seconds["finetune_stage"] = round(time.perf_counter() - t0, 1)
        evaluate_stage(cfg)  # baselines on the same folds (the gate) + the DVC parity plot data
        seconds["evaluate_stage"] = round(time.perf_counter() - t0, 1)
        decision = register_stage(cfg)
        seconds["register_stage"] = round(time.perf_counter() - t0, 1)
        kit.record_timing("pipeline_to_server_s", seconds)
    saved = json.loads((proj / "models/finetune/scratch/paraisite_d1/cv.json").read_text())
    return {
        "cfg": cfg,
        "project": proj,
        "cv": cv,
        "run_id": saved["mlflow_run_id"],
        "decision": decision,
    }


@pytest.fixture(scope="module")
def client(team: Team, pipeline: dict[str, Any]) -> Iterator[Any]:
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team.user_password)
        yield MlflowClient(tracking_uri=team.url)


def test_requests_without_valid_credentials_get_401(team: Team) -> None:
    api = f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(api) == 401
    assert _status(api, ("admin", "wrong-password-123")) == 401
    assert _status(api, (USER, team.user_password)) == 200
    assert _status(f"{team.url}/health") == 200  # liveness stays open for probes


def test_stages_log_to_the_server_with_server_side_artifacts(
    team: Team, pipeline: dict[str, Any], client: Any
) -> None:
    prefix = pipeline["cfg"].tracking.experiment
    exp = client.get_experiment_by_name(f"{prefix}-transfer")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:/")
    run = client.get_run(pipeline["run_id"])
    assert run.info.run_name == "finetune·D1·scratch"
    assert run.data.metrics["log10_mae_mean"] == pytest.approx(
        pipeline["cv"]["summary"]["log10_mae_mean"]
    )
    assert run.data.tags["dvc.stage"].startswith("finetune")
    data = client.get_experiment_by_name(f"{prefix}-data")
    names = {r.info.run_name for r in client.search_runs([data.experiment_id], max_results=100)}
    assert {"ingest·D1", "prepare·D1", "featurize·D1"} <= names
    # artifacts went through the server into --artifacts-destination, not a client path
    stored = team.root / "artifacts" / exp.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "cv.json").is_file() and (stored / "predictions.csv").is_file()
    assert not (pipeline["project"] / "mlruns").exists()
    # the register stage put the ensemble in the registry as champion
    name = str(pipeline["cfg"].registry.model_name)
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == pipeline["decision"]["candidate_version"]
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/"))


def _screenshot(driver: Any, name: str) -> Path:
    path = kit.artifacts_dir() / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def test_ui_shows_experiment_run_metrics_and_champion_model(
    team: Team, pipeline: dict[str, Any], client: Any
) -> None:
    cfg = pipeline["cfg"]
    exp = client.get_experiment_by_name(f"{cfg.tracking.experiment}-transfer")
    run_id, model = pipeline["run_id"], str(cfg.registry.model_name)
    t0 = time.perf_counter()
    driver = kit.chromium()
    try:
        kit.use_basic_auth(driver, USER, team.user_password)
        driver.get(f"{team.url}/health")  # set UI preferences before the app loads
        driver.execute_script(
            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        driver.get(f"{team.url}/#/experiments/{exp.experiment_id}/runs")
        kit.wait_for_texts(driver, [exp.name, "finetune·D1·scratch"])
        _screenshot(driver, "mlflow_runs.png")

        driver.get(f"{team.url}/#/experiments/{exp.experiment_id}/runs/{run_id}")
        body = kit.wait_for_texts(driver, ["finetune·D1·scratch", "log10_mae_mean"])
        assert "mape_mean" in body  # the headline metrics (the model: its own page below)
        _screenshot(driver, "mlflow_run.png")

        driver.get(f"{team.url}/#/models/{model}")
        kit.wait_for_texts(driver, [model, "champion", "Version 1"])
        _screenshot(driver, "mlflow_model.png")
    finally:
        driver.quit()
    kit.record_timing("ui_check_s", round(time.perf_counter() - t0, 1))


def test_dvc_parity_plot_renders_offline(pipeline: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    from kappaflow.layout import project_root

    repo = project_root()
    dvc = str(Path(sys.executable).with_name("dvc"))
    configured = subprocess.run(
        [dvc, "config", "--project", "plots.html_template"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert configured, ".dvc/config has no plots.html_template"
    template = (repo / ".dvc" / configured).resolve()
    kit.require(
        template.is_file(), f"{template} missing: run `python scripts/build_plots_template.py`"
    )
    entry = [
        p for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"] if PARITY_PLOT in p
    ]
    assert len(entry) == 1, f"dvc.yaml has no plot {PARITY_PLOT}"
    proj = pipeline["project"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"plots": entry}, allow_unicode=True))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (
        [dvc, "init", "--no-scm", "-q", "-f"],
        [dvc, "config", "plots.html_template", str(template)],
        [dvc, "plots", "show", "-o", str(tmp_path / "dvc_plots")],
    ):
        if cmd[1] == "plots":  # the repo's custom vega-lite templates (log-log scatter)
            (proj / ".dvc" / "plots").mkdir(parents=True, exist_ok=True)
            for custom in (repo / ".dvc" / "plots").glob("*.json"):
                shutil.copy2(custom, proj / ".dvc" / "plots" / custom.name)
        res = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    html = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html
    assert "plots/transfer/parity_paraisite_d1.csv" in html  # written by the evaluate stage

    driver = kit.chromium(offline=True, size=(1000, 700))
    try:
        driver.get((tmp_path / "dvc_plots" / "index.html").as_uri())
        deadline = time.monotonic() + 30
        drawn = 0
        while time.monotonic() < deadline and drawn < 500:
            drawn = driver.execute_script(
                "const c = document.querySelector('canvas'); if (!c) return 0;"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
            )
            time.sleep(0.25)
        requests = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        _screenshot(driver, "dvc_parity.png")
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert drawn >= 500, f"vega drew nothing ({drawn} painted pixels); console: {errors}"
    assert not [r for r in requests if r.startswith(("http://", "https://"))], requests
    assert not errors, errors


def test_sigterm_stops_the_team_server_cleanly(team: Team) -> None:
    team.process.send_signal(signal.SIGTERM)
    assert team.process.wait(30) == 0, team.log.read_text()[-3000:]
    assert not kit.alive(team.tree), "server processes left after SIGTERM"
    from kappaflow.tracking.server import health

    assert not health(team.url, timeout=1.0)
