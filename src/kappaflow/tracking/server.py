"""``kappaflow server``: an MLflow tracking + model-registry server, embedded or team mode.

* **embedded** (default): the project's own store ``sqlite:///<project>/mlflow.db`` (the one the
  stages write to without a server) and ``<project>/mlartifacts``; no auth; one user.
* **team** (``--team``): a PostgreSQL backend (``postgresql+psycopg2://…``), a shared artifact
  store (``--artifacts-destination``, e.g. ``s3://…``) served through the server, MLflow's
  basic-auth app (:mod:`kappaflow.tracking.auth`) behind a failed-login limiter
  (:mod:`kappaflow.tracking.auth_app`, ``--app-name kappaflow-auth``); other users' resources
  are read-only by default (``default_permission: READ``; ``kappaflow server grant``).

Either way the server binds to 127.0.0.1:5000 unless told otherwise, gets explicit
``--allowed-hosts``/``--cors-allowed-origins``, runs without MLflow's job runner
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: ~7 worker processes, ~1.7 GB, unused here),
applies the schema migrations first (``mlflow db upgrade``), and stops cleanly on SIGTERM/SIGINT.
Fail safe: ``mlflow server`` leads its own process group and gets SIGTERM when ``kappaflow server``
dies (``PR_SET_PDEATHSIG``); a pid file ``.cache/kappaflow/server-<port>.pid`` names that group,
so a start after a SIGKILL terminates what is left of the previous one (only processes whose
``/proc`` cmdline is mlflow/uvicorn and whose environment carries that run's token) and removes
its auth directory. The generated ``basic_auth.ini`` never holds a database password (it goes to
the server as ``PGPASSWORD``).
Experiments created through it store artifacts server-side (``mlflow-artifacts:/<id>``).
Settings: ``tracking.server`` in ``conf/tracking/server.yaml``; CLI flags win over it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kappaflow.layout import project_root
from kappaflow.tracking.auth import (
    SECRET_KEY_ENV,
    AdminCredentials,
    AuthConfigError,
    flask_secret_key,
    mask_uri,
)
from kappaflow.tracking.auth_app import LIMIT_ENV

log = logging.getLogger(__name__)

BACKEND_ENV = "KAPPAFLOW_MLFLOW_BACKEND_URI"
ARTIFACTS_ENV = "KAPPAFLOW_MLFLOW_ARTIFACTS"
#: Env var marking the processes of one server start (pid-file check before killing strays).
TOKEN_ENV = "KAPPAFLOW_SERVER_TOKEN"
#: ``mlflow server --app-name``: basic auth behind the failed-login limiter (pyproject.toml).
AUTH_APP_NAME = "kappaflow-auth"
AUTH_DIR_PREFIX = "kappaflow-mlflow-auth-"
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class ServerError(RuntimeError):
    """The server could not be configured, started or stopped."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``mlflow server`` is started with.

    Attributes:
        backend_store_uri: tracking + registry store (SQLAlchemy URI).
        artifacts_destination: where proxied artifacts are stored (a directory or ``s3://…``).
        host: bind address.
        port: TCP port.
        workers: uvicorn worker processes.
        allowed_hosts: accepted ``Host`` headers (DNS-rebinding protection).
        cors_allowed_origins: origins allowed to send state-changing requests.
        auth: run MLflow's basic-auth app.
        auth_database_uri: auth store (users, permissions); None: derived from the backend.
        default_permission: basic-auth permission of every user on others' resources (``READ``:
            only owners, grantees and admins may change a run, a model version or an alias).
        auth_cache_ttl_s: seconds a verified login stays cached per worker (0: check each time).
        login_limit: failed-login limits (:class:`kappaflow.tracking.auth_app.LimitSettings`
            fields); None: its defaults.
        job_execution: enable MLflow's job runner.
        startup_timeout_s: seconds to wait for ``GET /health``.
    """

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    cors_allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    auth: bool = False
    auth_database_uri: str | None = None
    default_permission: str = "READ"
    auth_cache_ttl_s: int = 60
    login_limit: Mapping[str, Any] | None = None
    job_execution: bool = False
    startup_timeout_s: float = 180.0

    @property
    def url(self) -> str:
        """Base URL clients use (``MLFLOW_TRACKING_URI``); loopback for a wildcard bind."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str, port: int) -> tuple[str, ...]:
    """``Host`` headers a server bound to ``host:port`` answers: loopback names + ``host``.

    Raises:
        ServerError: a wildcard bind (``0.0.0.0``/``::``): say which names clients use.
    """
    if host in ("0.0.0.0", "::"):
        raise ServerError(
            f"--host {host} listens on every interface: list the names clients use with "
            "--allowed-hosts (e.g. mlflow.example.org:5000,10.0.0.7:5000)"
        )
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}"]
    if not _is_loopback(host):
        hosts.append(f"{host}:{port}")
    return tuple(hosts)


def _project_path(value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else project_root() / p)


def _resolve_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` → ``sqlite:///<project root>/relative.db``."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + _project_path(uri[len(prefix) :])
    return uri


def _resolve_artifacts(dest: str) -> str:
    return dest if "://" in dest else _project_path(dest)


def settings_from_config(
    server_cfg: Mapping[str, Any],
    *,
    team: bool = False,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServerSettings:
    """Build :class:`ServerSettings` from ``tracking.server`` + env + explicit overrides.

    Args:
        server_cfg: the ``tracking.server`` node (conf/tracking/server.yaml), as a plain mapping.
        team: use the ``team`` section (else ``embedded``).
        env: environment for ``KAPPAFLOW_MLFLOW_BACKEND_URI``/``KAPPAFLOW_MLFLOW_ARTIFACTS``
            (team mode; default ``os.environ``).
        **overrides: :class:`ServerSettings` fields (None values are ignored), e.g. from the CLI.

    Raises:
        ServerError: team mode without a backend store or an artifact destination.
    """
    env = os.environ if env is None else env
    mode = dict(server_cfg.get("team" if team else "embedded") or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    backend = given.pop("backend_store_uri", None) or (env.get(BACKEND_ENV) if team else None)
    backend = backend or mode.get("backend_store_uri")
    artifacts = given.pop("artifacts_destination", None) or (
        env.get(ARTIFACTS_ENV) if team else None
    )
    artifacts = artifacts or mode.get("artifacts_destination")
    if not backend:
        raise ServerError(f"team mode needs --backend-store-uri or env {BACKEND_ENV}")
    if not artifacts:
        raise ServerError(f"team mode needs --artifacts-destination or env {ARTIFACTS_ENV}")
    host = str(given.pop("host", server_cfg.get("host") or "127.0.0.1"))
    port = int(given.pop("port", server_cfg.get("port") or 5000))
    hosts = given.pop("allowed_hosts", None) or server_cfg.get("allowed_hosts")
    hosts = tuple(hosts) if hosts else default_allowed_hosts(host, port)
    origins = given.pop("cors_allowed_origins", None) or server_cfg.get("cors_allowed_origins")
    origins = tuple(origins) if origins else tuple(f"http://{h}" for h in hosts if "*" not in h)
    settings = ServerSettings(
        backend_store_uri=_resolve_sqlite(str(backend)),
        artifacts_destination=_resolve_artifacts(str(artifacts)),
        host=host,
        port=port,
        workers=int(server_cfg.get("workers") or 1),
        allowed_hosts=hosts,
        cors_allowed_origins=origins,
        auth=bool(mode.get("auth", False)),
        auth_database_uri=mode.get("auth_database_uri"),
        default_permission=str(mode.get("default_permission") or "READ"),
        auth_cache_ttl_s=int(mode.get("auth_cache_ttl_s", 60)),
        login_limit=dict(mode["login_limit"]) if mode.get("login_limit") else None,
        job_execution=bool(server_cfg.get("job_execution", False)),
        startup_timeout_s=float(server_cfg.get("startup_timeout_s") or 180.0),
    )
    return replace(settings, **given)


def mlflow_executable() -> str:
    """Return the ``mlflow`` console script of this interpreter's environment (else on PATH)."""
    beside = Path(sys.executable).with_name("mlflow")
    found = str(beside) if beside.is_file() else shutil.which("mlflow")
    if not found:
        raise ServerError("the `mlflow` command is not installed in this environment")
    return found


def server_command(settings: ServerSettings) -> list[str]:
    """Build the ``mlflow server`` argv (the backend URI goes in the env: :func:`server_env`)."""
    cmd = [
        mlflow_executable(),
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--serve-artifacts",
        "--artifacts-destination",
        settings.artifacts_destination,
        "--allowed-hosts",
        ",".join(settings.allowed_hosts),
        "--cors-allowed-origins",
        ",".join(settings.cors_allowed_origins),
    ]
    if settings.auth:
        cmd += ["--app-name", AUTH_APP_NAME]
    return cmd


def server_env(
    settings: ServerSettings,
    *,
    auth_config_path: str | os.PathLike[str] | None = None,
    admin: AdminCredentials | None = None,
    base: Mapping[str, str] | None = None,
    db_password: str | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """Environment of the server process.

    The backend URI goes in ``MLFLOW_BACKEND_STORE_URI`` (``mlflow server`` reads it), so a
    password in it never shows in ``ps``; the admin password and the Flask secret key likewise go
    in ``MLFLOW_AUTH_ADMIN_PASSWORD`` / ``MLFLOW_FLASK_SERVER_SECRET_KEY``. Client credentials of
    the caller are dropped.

    Args:
        settings: server settings.
        auth_config_path: the generated ``basic_auth.ini`` (auth on).
        admin: basic-auth admin credentials.
        base: environment to start from (default ``os.environ``).
        db_password: the auth database's password, taken out of the ini's URI: passed as
            ``PGPASSWORD`` (libpq reads it).
        token: marks this start's processes (:data:`TOKEN_ENV`, checked before a later start
            kills strays).

    Raises:
        ServerError: auth on without an ini, or ``db_password`` differs from a ``PGPASSWORD``
            already set.
    """
    env = dict(os.environ if base is None else base)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    env.update(
        {
            "MLFLOW_BACKEND_STORE_URI": settings.backend_store_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(settings.job_execution).lower(),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if token:
        env[TOKEN_ENV] = token
    if db_password:
        if env.get("PGPASSWORD") not in (None, "", db_password):
            raise ServerError(
                "the auth database URI carries a password other than PGPASSWORD: keep passwords "
                "in PGPASSWORD or ~/.pgpass, not in URIs"
            )
        env["PGPASSWORD"] = db_password
    if settings.auth:
        if auth_config_path is None:
            raise ServerError("auth is on but no basic_auth.ini was written")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config_path)
        env[SECRET_KEY_ENV] = flask_secret_key(admin, env)
        env[LIMIT_ENV] = json.dumps(dict(settings.login_limit or {}))
        if admin is not None:
            env["MLFLOW_AUTH_ADMIN_USERNAME"] = admin.username
            if admin.password:
                env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin.password
    return env


def is_sql_uri(uri: str) -> bool:
    """Whether ``uri`` is a SQLAlchemy database URI MLflow can migrate."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    return "://" in uri and scheme in SQL_SCHEMES


_UPGRADE = (
    "import os, mlflow.db; mlflow.db.upgrade.main("
    "[os.environ['KAPPAFLOW_DB_UPGRADE_URI']], prog_name='mlflow db upgrade')"
)


def upgrade_database(uri: str, env: Mapping[str, str] | None = None) -> float:
    """Run ``mlflow db upgrade`` on a SQL store (creates the tables of an empty one).

    The URI is handed over in the environment, not argv (passwords stay out of ``ps``).

    Returns:
        Seconds it took.

    Raises:
        ServerError: the migration failed (its output is in the message).
    """
    if not is_sql_uri(uri):
        return 0.0
    t0 = time.perf_counter()
    run_env = {**(os.environ if env is None else env), "KAPPAFLOW_DB_UPGRADE_URI": uri}
    res = subprocess.run(
        [sys.executable, "-c", _UPGRADE], env=run_env, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise ServerError(
            f"`mlflow db upgrade {mask_uri(uri)}` failed ({res.returncode}):\n{res.stderr[-3000:]}"
        )
    return time.perf_counter() - t0


def check_requirements(settings: ServerSettings) -> None:
    """Fail early, with the install command, when an optional dependency is missing.

    Raises:
        ServerError: basic auth without Flask-WTF, or a PostgreSQL backend without psycopg2.
    """
    import importlib.util

    needs = []
    if settings.auth and importlib.util.find_spec("flask_wtf") is None:
        needs.append("Flask-WTF (MLflow's basic-auth app)")
    uris = (settings.backend_store_uri, settings.auth_database_uri or "")
    if (
        any(u.startswith("postgresql") for u in uris)
        and importlib.util.find_spec("psycopg2") is None
    ):
        needs.append("psycopg2 (PostgreSQL)")
    if needs:
        raise ServerError(f"missing {', '.join(needs)}: pip install -e '.[team]'")


def health(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET <url>/health`` answers 200 (unauthenticated even with basic auth)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    url: str, proc: subprocess.Popen[Any] | None = None, timeout_s: float = 180.0
) -> float:
    """Poll ``GET /health`` until it answers.

    Returns:
        Seconds waited.

    Raises:
        ServerError: the process exited, or no answer within ``timeout_s``.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"mlflow server exited with code {proc.returncode} during start")
        if health(url):
            return time.perf_counter() - t0
        time.sleep(0.25)
    raise ServerError(f"{url}/health did not answer within {timeout_s:.0f} s")


def stop_process_group(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """SIGTERM the server (MLflow forwards it to uvicorn), then SIGKILL its group if it hangs.

    Returns:
        The server's exit code (negative: killed by that signal).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("mlflow server did not stop within %.0f s: SIGKILL", timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # any straggler of its session (uvicorn workers)
    return proc.wait()


def pid_file_path(port: int) -> Path:
    """``<project>/.cache/kappaflow/server-<port>.pid``: the running server of that port."""
    return project_root() / ".cache" / "kappaflow" / f"server-{port}.pid"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ_has(pid: int, key: str, value: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{key}={value}".encode() in raw.split(b"\0")


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks after boot; tells a reused pid apart), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat_file.parent.name))
    return members


def is_our_server_process(pid: int, token: str) -> bool:
    """Whether ``pid`` is an mlflow/uvicorn process of the server start marked ``token``.

    Both must hold: its ``/proc/<pid>/cmdline`` runs ``mlflow`` or ``uvicorn``, and its
    environment carries ``KAPPAFLOW_SERVER_TOKEN=<token>`` (a reused pid never matches).
    """
    cmd = " ".join(_cmdline(pid))
    return ("mlflow" in cmd or "uvicorn" in cmd) and _environ_has(pid, TOKEN_ENV, token)


def reap_stale_server(path: str | os.PathLike[str], timeout_s: float = 15.0) -> list[int]:
    """Clean up after a server whose ``kappaflow server`` process died (e.g. SIGKILL).

    Reads the pid file ``path``; if its owner process is gone (same pid and start time),
    SIGTERMs (then SIGKILLs) the
    processes of the recorded group that are verifiably ours (:func:`is_our_server_process`),
    removes the recorded private auth directory and the pid file. A pid file of a live owner is
    left alone (that server is running).

    Returns:
        The pids terminated.
    """
    p = Path(path)
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        p.unlink(missing_ok=True)
        return []
    owner = int(info.get("owner_pid") or 0)
    if owner and _start_time(owner) == info.get("owner_start"):
        return []  # the very process that started it still runs (not a reused pid)
    token = str(info.get("token") or "")
    pgid = int(info.get("pgid") or 0)
    victims = [pid for pid in _group_members(pgid) if token and is_our_server_process(pid, token)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and (left := _group_members(pgid)):
            if not set(left) & set(victims):
                break
            time.sleep(0.1)
        left = sorted(set(_group_members(pgid)) & set(victims))
        if not left:
            break
        if sig == signal.SIGTERM:
            log.warning("stale server processes %s ignored SIGTERM: SIGKILL", left)
    if victims:
        log.warning("terminated stale mlflow server processes %s (pid file %s)", victims, p)
    auth_dir = info.get("auth_dir")
    if auth_dir and Path(auth_dir).name.startswith(AUTH_DIR_PREFIX):
        shutil.rmtree(auth_dir, ignore_errors=True)
    p.unlink(missing_ok=True)
    return victims


def _write_pid_file(path: Path, info: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dict(info), f)
    tmp.replace(path)


def _die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when the process that spawned it dies (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class RunningServer:
    """A started server: its process, URL and timings.

    Attributes:
        settings: what it was started with.
        process: the ``mlflow server`` process (leader of its own session).
        upgrade_s: seconds of ``mlflow db upgrade``.
        startup_s: seconds from spawn to the first healthy ``GET /health``.
        auth_dir: private directory of the generated ``basic_auth.ini`` (removed on stop).
        pid_file: records the process group (removed on stop; see :func:`reap_stale_server`).
    """

    settings: ServerSettings
    process: subprocess.Popen[Any]
    upgrade_s: float = 0.0
    startup_s: float = 0.0
    auth_dir: Path | None = None
    pid_file: Path | None = None

    @property
    def url(self) -> str:
        """Base URL for ``MLFLOW_TRACKING_URI``."""
        return self.settings.url

    def stop(self, timeout_s: float = 30.0) -> int:
        """Stop the server (SIGTERM, then SIGKILL) and remove the private auth directory."""
        code = stop_process_group(self.process, timeout_s)
        if self.auth_dir is not None:
            shutil.rmtree(self.auth_dir, ignore_errors=True)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return code


def start_server(
    settings: ServerSettings,
    *,
    admin: AdminCredentials | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> RunningServer:
    """Migrate the store, write the auth config, spawn ``mlflow server`` and wait for health.

    Args:
        settings: server settings.
        admin: basic-auth admin; default: :func:`kappaflow.tracking.auth.admin_credentials`.
        log_file: server stdout/stderr go there (default: inherited).

    Returns:
        The healthy server; call :meth:`RunningServer.stop` (or use :func:`running_server`).

    Raises:
        ServerError: migration failure, early exit or no health within the timeout.
        AuthConfigError: bad credentials / auth settings.
    """
    from kappaflow.tracking import auth

    check_requirements(settings)
    pid_file = pid_file_path(settings.port)
    if pid_file.exists() and reap_stale_server(pid_file):
        deadline = time.monotonic() + 15.0  # the port frees once the old uvicorn is gone
        while health(settings.url, timeout=0.5) and time.monotonic() < deadline:
            time.sleep(0.25)
    if health(settings.url, timeout=0.5):
        raise ServerError(f"something already answers on {settings.url}")
    upgrade_s = upgrade_database(settings.backend_store_uri)
    auth_dir: Path | None = None
    config_path: Path | None = None
    db_password: str | None = None
    if settings.auth:
        admin = admin or auth.admin_credentials()
        db_uri = settings.auth_database_uri or auth.auth_database_uri(settings.backend_store_uri)
        if auth.ensure_database(db_uri):
            log.info("created auth database %s", mask_uri(db_uri))
        ini_uri, db_password = auth.split_password(db_uri)
        config_path = auth.write_auth_config(
            ini_uri,
            admin.username if admin else "admin",
            settings.default_permission,
            auth_cache_ttl_s=settings.auth_cache_ttl_s,
        )
        auth_dir = config_path.parent
    token = secrets.token_hex(16)
    try:
        env = server_env(
            settings,
            auth_config_path=config_path,
            admin=admin,
            db_password=db_password,
            token=token,
        )
    except BaseException:
        if auth_dir is not None:
            shutil.rmtree(auth_dir, ignore_errors=True)
        raise
    out = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (child owns it)
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            server_command(settings),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # own process group: Ctrl-C reaches us, we stop it cleanly
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        if out is not None:
            out.close()
    info = {
        "owner_pid": os.getpid(),
        "owner_start": _start_time(os.getpid()),
        "pgid": proc.pid,
        "token": token,
        "port": settings.port,
        "auth_dir": str(auth_dir) if auth_dir else None,
        "started": time.time(),
    }
    _write_pid_file(pid_file, info)
    server = RunningServer(
        settings, proc, upgrade_s=upgrade_s, auth_dir=auth_dir, pid_file=pid_file
    )
    try:
        wait_until_healthy(settings.url, proc, settings.startup_timeout_s)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    server.startup_s = time.perf_counter() - t0
    return server


@contextlib.contextmanager
def running_server(settings: ServerSettings, **kwargs: Any) -> Iterator[RunningServer]:
    """:func:`start_server` as a context manager: the server is stopped on exit."""
    server = start_server(settings, **kwargs)
    try:
        yield server
    finally:
        server.stop()


class _StopRequested(Exception):
    """SIGTERM/SIGINT arrived while the server was still starting."""


def serve(settings: ServerSettings, mode: str = "embedded") -> int:
    """Run the server in the foreground until SIGTERM/SIGINT.

    Args:
        settings: server settings.
        mode: label for the start message (``embedded`` or ``team``).

    Returns:
        0 after a requested, clean stop; else the server's exit code.
    """
    server: RunningServer | None = None
    stop_requested = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True
        log.info("%s: stopping the MLflow server", signal.Signals(signum).name)
        if server is None:
            raise _StopRequested  # start_server stops the half-started process
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server = start_server(settings)
    except _StopRequested:
        return 0
    print(
        f"MLflow server ({mode}) ready at {server.url} in {server.startup_s:.1f} s "
        f"(db upgrade {server.upgrade_s:.1f} s)\n"
        f"  backend:   {mask_uri(settings.backend_store_uri)}\n"
        f"  artifacts: {mask_uri(settings.artifacts_destination)}\n"
        f"  auth:      {'basic-auth' if settings.auth else 'none'}\n"
        f"  clients:   export MLFLOW_TRACKING_URI={server.url}",
        flush=True,
    )
    code = server.process.wait()
    server.stop()
    return 0 if stop_requested and code in (0, -signal.SIGTERM) else code


def _server_cfg() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from kappaflow.config import compose

    cfg = compose(["tracking=server"])
    node = OmegaConf.to_container(cfg.tracking.server, resolve=True)
    assert isinstance(node, dict)
    return node


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_config(
            _server_cfg(),
            team=args.team,
            backend_store_uri=args.backend_store_uri,
            artifacts_destination=args.artifacts_destination,
            host=args.host,
            port=args.port,
            auth=args.auth,
            allowed_hosts=args.allowed_hosts,
            cors_allowed_origins=args.cors_allowed_origins,
        )
        return serve(settings, mode="team" if args.team else "embedded")
    except (ServerError, AuthConfigError) as exc:
        print(f"kappaflow server: {exc}", file=sys.stderr)
        return 2


def _cmd_add_user(args: argparse.Namespace) -> int:
    import getpass

    from kappaflow.tracking.auth import add_user

    url = args.url or os.environ.get("MLFLOW_TRACKING_URI")
    if not url or not url.startswith(("http://", "https://")):
        print(
            "kappaflow server add-user: give --url or an http(s) MLFLOW_TRACKING_URI",
            file=sys.stderr,
        )
        return 2
    if not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        print(
            "kappaflow server add-user: set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
            "to an admin's credentials",
            file=sys.stderr,
        )
        return 2
    password = os.environ.get("KAPPAFLOW_NEW_USER_PASSWORD") or getpass.getpass(
        f"password for {args.username}: "
    )
    try:
        add_user(url, args.username, password, admin=args.admin)
    except AuthConfigError as exc:
        print(f"kappaflow server add-user: {exc}", file=sys.stderr)
        return 2
    print(f"created user {args.username!r} on {url}{' (admin)' if args.admin else ''}")
    return 0


def _cmd_grant(args: argparse.Namespace) -> int:
    from kappaflow.tracking.auth import grant

    url = args.url or os.environ.get("MLFLOW_TRACKING_URI")
    if not url or not url.startswith(("http://", "https://")):
        print(
            "kappaflow server grant: give --url or an http(s) MLFLOW_TRACKING_URI", file=sys.stderr
        )
        return 2
    try:
        kind, rid, perm = grant(
            url,
            args.username,
            model=args.model,
            experiment=args.experiment,
            permission=args.permission,
        )
    except AuthConfigError as exc:
        print(f"kappaflow server grant: {exc}", file=sys.stderr)
        return 2
    print(f"granted {perm} on {kind} {rid!r} to {args.username!r} on {url}")
    return 0


#: What ``kappaflow server --help`` says (for users; the module docstring is for developers).
SERVER_DESCRIPTION = """\
Serve the MLflow UI and model registry for this project's runs.

  embedded (default)  this project's store (mlflow.db, mlartifacts/); no sign-in; one user
  team (--team)       a PostgreSQL store and a shared artifact store, with sign-in; every
                      user may read everything, only owners, grantees and admins change it

It listens on 127.0.0.1:5000 unless --host/--port say otherwise, upgrades the store's schema
first and stops cleanly on Ctrl-C. Settings: tracking.server in conf/tracking/server.yaml;
the options below win over them. See "Reviewing runs" in README.md.

examples:
  kappaflow server
  kappaflow server --team --host 0.0.0.0 --allowed-hosts mlflow.lab:5000
  kappaflow server grant registrar kappaflow-kappa --url http://mlflow.lab:5000
"""


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``kappaflow server [--team] …``, ``server add-user NAME``, ``server grant NAME …``."""
    p = subparsers.add_parser(
        "server",
        help="MLflow tracking + registry server (embedded sqlite, or --team: PostgreSQL + auth)",
        description=SERVER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--team", action="store_true", help="team mode (tracking.server.team)")
    p.add_argument("--backend-store-uri", help=f"SQLAlchemy URI (team default: env {BACKEND_ENV})")
    p.add_argument(
        "--artifacts-destination", help=f"artifact store (team default: env {ARTIFACTS_ENV})"
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 5000)")
    p.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="basic auth (default: on with --team, off otherwise)",
    )
    p.add_argument("--allowed-hosts", type=_csv, help="comma-separated Host headers to accept")
    p.add_argument("--cors-allowed-origins", type=_csv, help="comma-separated CORS origins")
    p.set_defaults(func=_cmd_serve)
    sub = p.add_subparsers(dest="server_command", metavar="{add-user,grant}")
    u = sub.add_parser(
        "add-user",
        help="create a basic-auth user (as the admin in MLFLOW_TRACKING_USERNAME/PASSWORD)",
        description="Create a sign-in user on a team server. Run as an admin: "
        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD name the admin; the new user's "
        "password is asked for on the terminal (or read from KAPPAFLOW_NEW_USER_PASSWORD).",
    )
    u.add_argument("username")
    u.add_argument("--url", help="server URL (default: MLFLOW_TRACKING_URI)")
    u.add_argument("--admin", action="store_true", help="make the user an admin")
    u.set_defaults(func=_cmd_add_user)
    g = sub.add_parser(
        "grant",
        help="let a user change a registered model (default MANAGE) or an experiment (EDIT)",
        description="With default_permission READ only owners, grantees and admins may write. "
        "E.g. the register stage's service user: `kappaflow server grant registrar "
        "kappaflow-kappa`; a teammate logging runs: `kappaflow server grant bob --experiment "
        "kappaflow`. Run as an admin (MLFLOW_TRACKING_USERNAME/PASSWORD).",
    )
    g.add_argument("username")
    g.add_argument("model", nargs="?", help="registered model name (e.g. kappaflow-kappa)")
    g.add_argument("--experiment", help="an experiment name instead of a model")
    g.add_argument("--permission", choices=("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"))
    g.add_argument("--url", help="server URL (default: MLFLOW_TRACKING_URI)")
    g.set_defaults(func=_cmd_grant)
