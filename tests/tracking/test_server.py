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
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
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
