"""Team mode on a real PostgreSQL server: two `kappaflow sweep` processes share one study.

The server URL (the ``optuna`` database, as ``scripts/postgres.sh start`` prints it) comes from
``KAPPAFLOW_TEST_PG_URL``; MLflow uses the ``mlflow`` database of the same server. Without it the
test skips locally and fails in CI (``CI=true``: ``.ci/run`` starts the server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.data, pytest.mark.integration, pytest.mark.slow]

PG_ENV = "KAPPAFLOW_TEST_PG_URL"
TINY = [
    "sweep.strategy=scratch",  # no pretrained encoder needed
    "sweep.params=[{path: transfer.strategies.scratch.trainer.optim.lr, type: float, "
    "low: 1.0e-4, high: 3.0e-3, log: true}]",
    "sweep.inner.n_splits=2",
    "sweep.pruner.n_startup_trials=100",  # this test counts COMPLETE trials: no pruning
    "sweep.heartbeat.interval_s=2",
    "sweep.heartbeat.grace_s=10",
    "sweep.heartbeat.poll_s=1",
    "sweep.best_file=null",
    "+sweep.trainer.max_epochs=1",
    "+sweep.trainer.limit_train_batches=2",
    "models.cgcnn.atom_fea_len=16",
    "models.cgcnn.n_conv=1",
    "models.cgcnn.h_fea_len=32",
]


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{PG_ENV} is not set in CI (.ci/run starts PostgreSQL with scripts/postgres.sh)"
            )
        pytest.skip(f"no PostgreSQL server: set {PG_ENV} (`scripts/postgres.sh start` prints it)")
    return url


def _database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture()
def d1_project(project):
    """The tiny temp project with ParAIsite D1 prepared and featurized, and a copy of conf/."""
    from kappaflow.layout import project_root
    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage

    root, cfg = project
    shutil.copytree(Path(__file__).resolve().parents[2] / "conf", root / "conf")
    assert project_root() == root
    ingest_stage(cfg, "paraisite_d1")
    prepare_stage(cfg, "paraisite_d1")
    featurize_stage(cfg, "paraisite_d1")
    return root


def test_two_workers_share_one_study_on_postgres(pg_url, d1_project, monkeypatch):
    import mlflow
    import optuna
    from optuna.trial import TrialState

    study = f"ci-{uuid.uuid4().hex[:8]}"
    optuna_url = _database(pg_url, "optuna")
    mlflow_url = _database(pg_url, "mlflow")
    experiment = f"sweep-test-{study}"
    mlflow.MlflowClient(mlflow_url).create_experiment(experiment)  # schema migrated once, here
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "OMP_NUM_THREADS": "1",
        "KAPPAFLOW_LOG_LEVEL": "WARNING",
    }
    args = [
        sys.executable, "-m", "kappaflow.cli", "sweep",
        "n_trials=6", f"study={study}", f"storage={optuna_url}",
        f"tracking.experiment={experiment}", *TINY,
    ]  # fmt: skip
    procs = [
        subprocess.Popen([*args, f"rank={rank}"], cwd=d1_project, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    trials = optuna.load_study(study_name=study, storage=optuna_url).trials
    assert [t.number for t in trials] == list(range(6)), [t.state for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["baseline"]
    per_worker = Counter(
        (t.user_attrs["worker"]["host"], t.user_attrs["worker"]["pid"]) for t in trials
    )
    print(f"trials per worker process: {sorted(per_worker.values())}")

    client = mlflow.MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name(f"{experiment}-sweeps")  # runs go to <prefix>-sweeps
    runs = client.search_runs([exp.experiment_id], f"tags.`optuna.study` = '{study}'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(
        r.info.status == "FINISHED" and r.data.metrics["log10_mae_mean"] > 0 for r in children
    )
