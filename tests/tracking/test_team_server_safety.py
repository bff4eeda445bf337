"""Team server fail-safes on PostgreSQL: read-only default, login limiter, SIGKILL recovery.

1. ``default_permission = READ``: a second non-admin user reads ``kappaflow-kappa`` but gets 403
   creating a version or moving ``@champion``; the service user granted MANAGE with
   ``kappaflow server grant`` (and the admin) succeed.
2. Wrong passwords: after ``login_limit.user_failures`` 401s the server answers 429 with
   ``Retry-After`` without checking the password; verified users still get in.
3. SIGKILL of ``kappaflow server``: the next start on the same port succeeds (the stale group is
   gone, the port free), the previous auth directory is removed, and no ``basic_auth.ini`` ever
   holds the database password (it was in the backend URI).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import server_testkit as kit

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.slow]

MODEL = "kappaflow-kappa"
DB_PASSWORD = "db-pw-" + secrets.token_hex(4)  # in the URI; trust auth ignores it


@dataclass
class Team:
    url: str
    env: dict[str, str]
    passwords: dict[str, str]
    root: Path


def call(
    team: Team, method: str, path: str, user: str | None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One REST call as ``user`` (its password from ``team``); return status, headers, JSON."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(team.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if user is not None:
        password = team.passwords.get(user, "wrong-" + secrets.token_hex(4))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, headers, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, {}


def team_env(pg_url: str, root: Path, admin_pw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    return env | {
        "KAPPAFLOW_MLFLOW_BACKEND_URI": pg_url.replace("postgres@", f"postgres:{DB_PASSWORD}@"),
        "KAPPAFLOW_MLFLOW_ARTIFACTS": str(root / "artifacts"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
    }


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with kit.postgres() as url:
        yield url


@pytest.fixture(scope="module")
def team(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    from kappaflow.cli import main

    root = tmp_path_factory.mktemp("team_safety")
    passwords = {u: secrets.token_urlsafe(18) for u in ("admin", "registrar", "bob")}
    port = kit.free_port()
    url = f"http://127.0.0.1:{port}"
    env = team_env(pg_url, root, passwords["admin"])
    with kit.server_process(["--team", "--port", str(port)], env, root / "server.log", url):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", passwords["admin"])
            for user in ("registrar", "bob"):
                mp.setenv("KAPPAFLOW_NEW_USER_PASSWORD", passwords[user])
                assert main(["server", "add-user", user, "--url", url]) == 0
        yield Team(url, env, passwords, root)


def test_only_the_granted_service_user_and_admins_change_the_model(team: Team) -> None:
    from kappaflow.cli import main

    api = "/api/2.0/mlflow"
    assert call(team, "POST", f"{api}/registered-models/create", "admin", {"name": MODEL})[0] == 200
    with pytest.MonkeyPatch.context() as mp:  # `kappaflow server grant registrar kappaflow-kappa`
        mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team.passwords["admin"])
        assert main(["server", "grant", "registrar", MODEL, "--url", team.url]) == 0
    status, _, exp = call(team, "POST", f"{api}/experiments/create", "registrar", {"name": "kf"})
    assert status == 200
    status, _, run = call(
        team, "POST", f"{api}/runs/create", "registrar", {"experiment_id": exp["experiment_id"]}
    )
    assert status == 200
    run_id = run["run"]["info"]["run_id"]
    version = {"name": MODEL, "source": f"runs:/{run_id}/model", "run_id": run_id}

    status, _, created = call(team, "POST", f"{api}/model-versions/create", "registrar", version)
    assert status == 200, created
    alias = {"name": MODEL, "alias": "champion", "version": created["model_version"]["version"]}
    assert call(team, "POST", f"{api}/registered-models/alias", "registrar", alias)[0] == 200

    # bob: signed in, not granted -> reads, but cannot register a version or move the alias
    assert call(team, "GET", f"{api}/registered-models/get?name={MODEL}", "bob")[0] == 200
    assert call(team, "POST", f"{api}/model-versions/create", "bob", version)[0] == 403
    assert call(team, "POST", f"{api}/registered-models/alias", "bob", alias)[0] == 403
    assert call(team, "POST", f"{api}/runs/create", "bob", {"experiment_id": "0"})[0] in (403,)
    # the admin may
    status, _, v2 = call(team, "POST", f"{api}/model-versions/create", "admin", version)
    assert status == 200
    alias2 = {**alias, "version": v2["model_version"]["version"]}
    assert call(team, "POST", f"{api}/registered-models/alias", "admin", alias2)[0] == 200


def test_wrong_password_flood_gets_429_before_the_hash(team: Team) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    codes = [call(team, "GET", path, "nobody")[0] for _ in range(5)]  # login_limit.user_failures
    assert codes == [401] * 5
    status, headers, _ = call(team, "GET", path, "nobody")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert call(team, "GET", path, "bob")[0] == 200  # a verified user of the same address: in
    assert call(team, "GET", path, None)[0] == 401  # no credentials: plain 401, not counted


def test_sigkilled_server_restarts_and_leaves_no_password_behind(
    team: Team, tmp_path: Path
) -> None:
    from kappaflow.tracking.server import pid_file_path

    port = kit.free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--team", "--port", str(port)]
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(
            kit.kappaflow_cmd("server", *args),
            env=team.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not kit.alive([first.pid]) or not _healthy(url):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        info = json.loads(pid_file_path(port).read_text())
        ini = Path(info["auth_dir"]) / "basic_auth.ini"
        assert ini.is_file() and DB_PASSWORD not in ini.read_text()
        tree = kit.process_tree(first.pid)
        first.send_signal(signal.SIGKILL)  # the parent only: no cleanup code runs
        first.wait()
        second_log = tmp_path / "second.log"
        with kit.server_process(args, team.env, second_log, url) as (second, _):
            while "ready at" not in second_log.read_text():  # the old server may answer a while
                assert second.poll() is None, second_log.read_text()[-3000:]
                time.sleep(0.25)
            assert not kit.alive([p for p in tree if p != first.pid]), "old server processes left"
            assert not ini.parent.exists(), "stale auth directory left"
            info2 = json.loads(pid_file_path(port).read_text())
            text = (Path(info2["auth_dir"]) / "basic_auth.ini").read_text()
            assert DB_PASSWORD not in text and "default_permission = READ" in text
        assert not pid_file_path(port).exists()
        for leftover in Path("/tmp").glob("kappaflow-mlflow-auth-*/basic_auth.ini"):
            assert DB_PASSWORD not in leftover.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _healthy(url: str) -> bool:
    from kappaflow.tracking.server import health

    return health(url, timeout=1.0)
