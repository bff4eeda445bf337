"""`kappaflow server`: settings, argv/env, auth config and credentials; one embedded start/stop."""

from __future__ import annotations

import configparser
import signal
import stat
from pathlib import Path

import pytest

from kappaflow.layout import project_root
from kappaflow.tracking import auth
from kappaflow.tracking.server import (
    ServerError,
    server_command,
    server_env,
    settings_from_config,
)

CFG = {
    "host": "127.0.0.1",
    "port": 5000,
    "workers": 1,
    "allowed_hosts": None,
    "cors_allowed_origins": None,
    "job_execution": False,
    "embedded": {"backend_store_uri": "sqlite:///mlflow.db", "artifacts_destination": "mlart"},
    "team": {
        "backend_store_uri": None,
        "artifacts_destination": None,
        "auth": True,
        "auth_database_uri": None,
        "default_permission": "EDIT",
    },
}
PG = "postgresql+psycopg2://kf:s3cret-pw@db.example:5432/mlflow"


def test_embedded_defaults_are_loopback_project_store_and_explicit_security() -> None:
    s = settings_from_config(CFG, env={})
    root = project_root()
    assert s.backend_store_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert s.artifacts_destination == str(root / "mlart")
    assert (s.host, s.port, s.auth, s.job_execution) == ("127.0.0.1", 5000, False, False)
    assert s.allowed_hosts == ("127.0.0.1:5000", "localhost:5000")
    assert s.cors_allowed_origins == ("http://127.0.0.1:5000", "http://localhost:5000")
    cmd = server_command(s)
    assert cmd[1] == "server" and Path(cmd[0]).name == "mlflow"
    flags = {name: cmd[cmd.index(name) + 1] for name in cmd if name.startswith("--")}
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "5000"
    assert flags["--allowed-hosts"] == "127.0.0.1:5000,localhost:5000"
    assert flags["--cors-allowed-origins"] == "http://127.0.0.1:5000,http://localhost:5000"
    assert flags["--artifacts-destination"] == str(root / "mlart")
    assert "--serve-artifacts" in cmd and "--app-name" not in cmd


def test_team_settings_come_from_env_or_flags_and_never_put_secrets_in_argv() -> None:
    with pytest.raises(ServerError, match="KAPPAFLOW_MLFLOW_BACKEND_URI"):
        settings_from_config(CFG, team=True, env={})
    with pytest.raises(ServerError, match="KAPPAFLOW_MLFLOW_ARTIFACTS"):
        settings_from_config(CFG, team=True, env={"KAPPAFLOW_MLFLOW_BACKEND_URI": PG})
    env = {"KAPPAFLOW_MLFLOW_BACKEND_URI": PG, "KAPPAFLOW_MLFLOW_ARTIFACTS": "s3://bucket/ml"}
    s = settings_from_config(CFG, team=True, env=env, port=5055)
    assert s.auth and s.backend_store_uri == PG and s.artifacts_destination == "s3://bucket/ml"
    assert s.port == 5055 and s.allowed_hosts == ("127.0.0.1:5055", "localhost:5055")
    flag = settings_from_config(CFG, team=True, env=env, backend_store_uri="sqlite:///x.db")
    assert flag.backend_store_uri.endswith("/x.db") and flag.backend_store_uri.startswith(
        "sqlite:////"
    )
    assert not settings_from_config(CFG, team=True, env=env, auth=False).auth

    cmd = server_command(s)
    assert cmd[cmd.index("--app-name") + 1] == "kappaflow-auth"  # basic auth + login limiter
    assert not any("s3cret" in part for part in cmd)
    admin = auth.AdminCredentials("admin", "admin-password-123", "test")
    base = {"MLFLOW_TRACKING_URI": "http://x", "MLFLOW_TRACKING_PASSWORD": "client", "PATH": "/bin"}
    server = server_env(s, auth_config_path="/tmp/x/basic_auth.ini", admin=admin, base=base)
    assert server["MLFLOW_BACKEND_STORE_URI"] == PG
    assert server["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server["MLFLOW_AUTH_CONFIG_PATH"] == "/tmp/x/basic_auth.ini"
    assert server["MLFLOW_AUTH_ADMIN_PASSWORD"] == "admin-password-123"
    assert len(server["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    assert "MLFLOW_TRACKING_URI" not in server and "MLFLOW_TRACKING_PASSWORD" not in server
    assert "s3cret" not in repr(admin) and "admin-password-123" not in repr(admin)


def test_wildcard_bind_needs_explicit_allowed_hosts() -> None:
    with pytest.raises(ServerError, match="--allowed-hosts"):
        settings_from_config(CFG, host="0.0.0.0")
    s = settings_from_config(CFG, host="0.0.0.0", allowed_hosts=("mlflow.example.org:5000",))
    assert s.allowed_hosts == ("mlflow.example.org:5000",)
    lan = settings_from_config(CFG, host="10.1.2.3")
    assert lan.allowed_hosts[-1] == "10.1.2.3:5000" and lan.url == "http://10.1.2.3:5000"


def test_auth_config_is_private_and_holds_no_password(tmp_path: Path) -> None:
    path = auth.write_auth_config("sqlite:////tmp/auth.db", "boss", "READ", tmp_path / "private")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ini = configparser.ConfigParser()
    ini.read(path)
    assert dict(ini["mlflow"]) == {
        "default_permission": "READ",
        "database_uri": "sqlite:////tmp/auth.db",
        "admin_username": "boss",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": "0",
    }
    with pytest.raises(auth.AuthConfigError, match="default_permission"):
        auth.write_auth_config("sqlite:///a.db", default_permission="ALL", directory=tmp_path)
    with pytest.raises(auth.AuthConfigError, match="inside the project"):
        auth.write_auth_config("sqlite:///a.db", directory=project_root() / "auth-tmp")
    assert not (project_root() / "auth-tmp").exists()


def test_admin_credentials_env_then_private_file_outside_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kappaflow/mlflow-auth.ini
    assert auth.admin_credentials({}) is None
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": "from-env-password", "MLFLOW_AUTH_ADMIN_USERNAME": "root"}
    creds = auth.admin_credentials(env)
    assert creds is not None and (creds.username, creds.password) == ("root", "from-env-password")
    with pytest.raises(auth.AuthConfigError, match="shorter than 12"):
        auth.admin_credentials({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"})

    creds_file = tmp_path / "auth.ini"
    creds_file.write_text("[admin]\nusername = chief\npassword = file-password-123\n")
    creds_file.chmod(0o644)
    with pytest.raises(auth.AuthConfigError, match="chmod 600"):
        auth.admin_credentials({"KAPPAFLOW_MLFLOW_AUTH_FILE": str(creds_file)})
    creds_file.chmod(0o600)
    creds = auth.admin_credentials({"KAPPAFLOW_MLFLOW_AUTH_FILE": str(creds_file)})
    assert creds is not None and (creds.username, creds.password) == ("chief", "file-password-123")
    with pytest.raises(auth.AuthConfigError, match="no such file"):
        auth.admin_credentials({"KAPPAFLOW_MLFLOW_AUTH_FILE": str(tmp_path / "missing.ini")})
    with pytest.raises(auth.AuthConfigError, match="inside the project"):
        auth.read_credentials_file(project_root() / "pyproject.toml")


def test_auth_store_defaults_and_uri_masking() -> None:
    assert auth.auth_database_uri(PG) == PG.replace("/mlflow", "/mlflow_auth")
    assert (
        auth.auth_database_uri("sqlite:////srv/ml/mlflow.db") == "sqlite:////srv/ml/mlflow_auth.db"
    )
    with pytest.raises(auth.AuthConfigError, match="auth_database_uri"):
        auth.auth_database_uri("file:///srv/mlruns")
    assert "s3cret" not in auth.mask_uri(PG) and "db.example:5432/mlflow" in auth.mask_uri(PG)
    masked = auth.mask_uri("https://user:pw-123@host/x")
    assert "pw-123" not in masked and "host/x" in masked


def test_client_side_artifact_location_on_a_server_is_flagged(caplog) -> None:
    from kappaflow.tracking.runs import warn_client_side_artifacts

    server = "http://127.0.0.1:5000"
    assert warn_client_side_artifacts(server, "kappaflow", "./mlruns/1")
    assert warn_client_side_artifacts(server, "kappaflow", "file:///home/me/proj/mlruns/1")
    assert "mlflow-artifacts:/" in caplog.text
    assert not warn_client_side_artifacts(server, "kappaflow", "mlflow-artifacts:/1")
    assert not warn_client_side_artifacts(server, "kappaflow", "s3://bucket/mlflow/1")
    assert not warn_client_side_artifacts("sqlite:///mlflow.db", "kappaflow", "./mlruns/1")


def test_missing_optional_dependencies_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from kappaflow.tracking.server import check_requirements

    env = {"KAPPAFLOW_MLFLOW_BACKEND_URI": PG, "KAPPAFLOW_MLFLOW_ARTIFACTS": "/srv/artifacts"}
    team = settings_from_config(CFG, team=True, env=env)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n in ("flask_wtf", "psycopg2") else real(n),
    )
    with pytest.raises(ServerError, match=r"Flask-WTF .*psycopg2.*\[team\]"):
        check_requirements(team)
    check_requirements(settings_from_config(CFG, env={}))  # embedded sqlite needs neither


def test_cli_rejects_team_mode_without_a_backend(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from kappaflow.cli import main

    monkeypatch.delenv("KAPPAFLOW_MLFLOW_BACKEND_URI", raising=False)
    assert main(["server", "--team"]) == 2
    assert "KAPPAFLOW_MLFLOW_BACKEND_URI" in capsys.readouterr().err


@pytest.mark.server
def test_embedded_server_starts_on_loopback_and_stops_on_sigterm(tmp_path: Path) -> None:
    import os
    import urllib.request

    import server_testkit as kit

    port = kit.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = [
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "mlartifacts"),
    ]
    with kit.server_process(args, env, tmp_path / "server.log", url) as (proc, startup_s):
        tree = kit.process_tree(proc.pid)
        rss = kit.tree_rss_mb(proc.pid)
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=5") as r:
            assert r.status == 200  # no auth in embedded mode
        kit.record_timing("embedded_startup_s", round(startup_s, 1))
        kit.record_timing("embedded_rss_mb", round(rss))
        assert (tmp_path / "mlflow.db").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert len(tree) >= 3  # kappaflow -> mlflow server -> uvicorn
    assert not kit.alive(tree), "server processes left after SIGTERM"
    log = (tmp_path / "server.log").read_text()
    assert f"Uvicorn running on {url}" in log and "Finished server process" in log


def test_team_default_permission_is_read_only_for_others() -> None:
    env = {"KAPPAFLOW_MLFLOW_BACKEND_URI": PG, "KAPPAFLOW_MLFLOW_ARTIFACTS": "s3://bucket/ml"}
    team_cfg = {**CFG, "team": {**CFG["team"], "default_permission": None}}
    assert settings_from_config(team_cfg, team=True, env=env).default_permission == "READ"
    from kappaflow.config import compose

    composed = compose(["tracking=server"]).tracking.server.team
    assert composed.default_permission == "READ" and composed.login_limit.user_failures >= 1


def test_auth_ini_never_holds_the_database_password(tmp_path: Path) -> None:
    uri, password = auth.split_password(PG)
    assert (
        password == "s3cret-pw" and "s3cret" not in uri and uri.endswith("@db.example:5432/mlflow")
    )
    assert auth.split_password("sqlite:////tmp/a.db") == ("sqlite:////tmp/a.db", None)
    with pytest.raises(auth.AuthConfigError, match="PGPASSWORD"):
        auth.write_auth_config(PG, directory=tmp_path / "a")
    env = {"KAPPAFLOW_MLFLOW_BACKEND_URI": PG, "KAPPAFLOW_MLFLOW_ARTIFACTS": "/srv/a"}
    s = settings_from_config(CFG, team=True, env=env)
    server = server_env(s, auth_config_path="/x/basic_auth.ini", db_password=password, base={})
    assert server["PGPASSWORD"] == "s3cret-pw"
    with pytest.raises(ServerError, match="PGPASSWORD"):
        server_env(s, auth_config_path="/x", db_password=password, base={"PGPASSWORD": "other"})


def test_login_limiter_blocks_before_the_hash_and_backs_off() -> None:
    from kappaflow.tracking.auth_app import LimitSettings, LoginLimiter

    now = [0.0]
    lim = LoginLimiter(LimitSettings(user_failures=3, address_failures=10), clock=lambda: now[0])
    bob = ("addr:10.0.0.1", "user:bob")
    for _ in range(3):
        assert lim.acquire(bob) == 0.0
        lim.release(bob, failed=True, credentials=("bob", "guess"))
    assert lim.acquire(bob) == pytest.approx(1.0)  # blocked: no attempt admitted
    now[0] += 1.1
    assert lim.acquire(bob) == 0.0
    lim.release(bob, failed=True)
    assert lim.acquire(bob) == pytest.approx(2.0)  # doubles per further failure
    other = ("addr:10.0.0.1", "user:carol")  # same address, other user: under the address limit
    assert lim.acquire(other) == 0.0
    assert lim.acquire(("addr:10.0.0.1", "user:carol")) == 0.0  # no failure yet: parallel ok
    lim.release(other, failed=False, credentials=("carol", "right-password"))
    assert lim.is_known_good("carol", "right-password")
    assert not lim.is_known_good("carol", "wrong")
    now[0] += 1000  # window over: forgotten
    assert lim.acquire(bob) == 0.0


def test_login_limit_middleware_answers_429_with_retry_after() -> None:
    import asyncio
    import base64

    from kappaflow.tracking.auth_app import LimitSettings, LoginLimiter, LoginLimitMiddleware

    calls = []

    async def app(scope, receive, send):  # 401 unless the password is right (a "hash" each)
        calls.append(scope["path"])
        ok = dict(scope["headers"]).get(b"authorization") == b"Basic " + base64.b64encode(
            b"bob:right-password"
        )
        await send({"type": "http.response.start", "status": 200 if ok else 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = LoginLimitMiddleware(app, LoginLimiter(LimitSettings(user_failures=2)))

    def get(password: str | None, path: str = "/api/2.0/mlflow/experiments/search"):
        headers = []
        if password is not None:
            token = base64.b64encode(f"bob:{password}".encode())
            headers.append((b"authorization", b"Basic " + token))
        scope = {"type": "http", "path": path, "headers": headers, "client": ("127.0.0.1", 1)}
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        asyncio.run(mw(scope, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"])

    assert get("right-password")[0] == 200
    assert [get("wrong")[0] for _ in range(2)] == [401, 401]
    n = len(calls)
    status, headers = get("wrong")
    assert status == 429 and int(headers[b"retry-after"]) >= 1 and len(calls) == n  # no check
    assert get("right-password")[0] == 200  # verified credentials still pass
    assert get(None)[0] == 401 and get("wrong", "/health")[0] == 401  # not limited


def test_stale_server_group_is_reaped_only_if_ours(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from kappaflow.tracking.server import TOKEN_ENV, is_our_server_process, reap_stale_server

    def fake_server(token: str) -> subprocess.Popen:
        return subprocess.Popen(  # cmdline names mlflow server; env carries the token
            [sys.executable, "-c", "import time; time.sleep(120)", "mlflow", "server"],
            env={**os.environ, TOKEN_ENV: token},
            start_new_session=True,
        )

    ours, foreign = fake_server("tok-ours"), fake_server("tok-foreign")
    auth_dir = tmp_path / "kappaflow-mlflow-auth-x"
    auth_dir.mkdir()
    try:
        assert is_our_server_process(ours.pid, "tok-ours")
        assert not is_our_server_process(foreign.pid, "tok-ours")
        pid_file = tmp_path / "server-1.pid"
        dead_owner = {"owner_pid": 2**22 - 1, "owner_start": 1, "auth_dir": str(auth_dir)}
        pid_file.write_text(json.dumps({**dead_owner, "pgid": foreign.pid, "token": "tok-ours"}))
        assert reap_stale_server(pid_file) == [] and foreign.poll() is None  # not ours: kept
        assert not pid_file.exists() and not auth_dir.exists()
        pid_file.write_text(json.dumps({**dead_owner, "pgid": ours.pid, "token": "tok-ours"}))
        assert reap_stale_server(pid_file) == [ours.pid]
        assert ours.wait(10) == -signal.SIGTERM
        from kappaflow.tracking.server import _start_time

        me = {"owner_pid": os.getpid(), "owner_start": _start_time(os.getpid())}
        pid_file.write_text(json.dumps({**me, "pgid": foreign.pid, "token": "tok-foreign"}))
        assert reap_stale_server(pid_file) == [] and pid_file.exists()  # live owner: left alone
    finally:
        for proc in (ours, foreign):
            proc.kill()
            proc.wait()
