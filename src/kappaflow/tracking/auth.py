"""Credentials and config of MLflow's basic-auth app for the team tracking server.

Nothing secret is read from or written to the repository:

* the server's admin credentials come from MLflow's own env vars ``MLFLOW_AUTH_ADMIN_USERNAME`` /
  ``MLFLOW_AUTH_ADMIN_PASSWORD``, or from a credentials file outside the project (env
  ``KAPPAFLOW_MLFLOW_AUTH_FILE``, default ``~/.config/kappaflow/mlflow-auth.ini``, mode 600)::

      [admin]
      username = admin
      password = <at least 12 characters>

* the ``basic_auth.ini`` that MLflow reads (``MLFLOW_AUTH_CONFIG_PATH``) is generated at server
  start in a private temporary directory (mode 700, file mode 600) and holds no password: the
  admin password reaches the server process through its environment only, and a database
  password is taken out of the auth store URI (:func:`split_password`) and passed as
  ``PGPASSWORD``;
* ``default_permission = READ``: a signed-in user reads everything but changes only what they
  created (owners get MANAGE) or were granted (:func:`grant`, ``kappaflow server grant``): the
  ``register`` stage's service user holds MANAGE on ``kappaflow-kappa``, nobody else can create
  its versions or move its ``champion`` alias around the promotion gate;
* the Flask secret key that signs the UI's CSRF tokens comes from
  ``MLFLOW_FLASK_SERVER_SECRET_KEY`` or the file's ``[server] secret_key``, else a random one is
  made per start (fine for one server process; replicas behind a load balancer must share one);
* clients authenticate with MLflow's standard ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import configparser
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kappaflow.layout import project_root

AUTH_FILE_ENV = "KAPPAFLOW_MLFLOW_AUTH_FILE"
DEFAULT_AUTH_FILE = Path("~/.config/kappaflow/mlflow-auth.ini")
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "READ"
MIN_PASSWORD_CHARS = 12  # MLflow's password policy


class AuthConfigError(ValueError):
    """Credentials or auth settings that the server must not start with."""


@dataclass(frozen=True)
class AdminCredentials:
    """The basic-auth admin user (created by MLflow on the first start against an empty store).

    Attributes:
        username: admin user name.
        password: its password (only needed until the admin user exists in the auth store).
        source: where they came from (an env var name or a file path), for messages.
    """

    username: str
    password: str | None
    source: str
    secret_key: str | None = None

    def __repr__(self) -> str:
        return f"AdminCredentials(username={self.username!r}, password=***, source={self.source!r})"


def _inside_project(path: Path) -> bool:
    try:
        path.resolve().relative_to(project_root().resolve())
    except ValueError:
        return False
    return True


def read_credentials_file(path: str | os.PathLike[str]) -> AdminCredentials:
    """Read ``[admin] username/password`` from a private file outside the project.

    Raises:
        AuthConfigError: the file lies inside the project (it could end up in git), is readable
            by group/others, or lacks ``[admin] password``.
    """
    p = Path(path).expanduser()
    if _inside_project(p):
        raise AuthConfigError(
            f"credentials file {p} is inside the project {project_root()}; keep it outside git "
            f"(e.g. {DEFAULT_AUTH_FILE})"
        )
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise AuthConfigError(f"credentials file {p} has mode {mode:o}; run `chmod 600 {p}`")
    parser = configparser.ConfigParser()
    parser.read(p, encoding="utf-8")
    if not parser.has_option("admin", "password"):
        raise AuthConfigError(f"credentials file {p} has no [admin] password")
    return AdminCredentials(
        username=parser.get("admin", "username", fallback="admin"),
        password=parser.get("admin", "password"),
        source=str(p),
        secret_key=parser.get("server", "secret_key", fallback=None),
    )


def admin_credentials(env: Mapping[str, str] | None = None) -> AdminCredentials | None:
    """Resolve the admin credentials: MLflow's env vars, else the credentials file, else None.

    None is fine once the admin user exists in the auth store; on a first start MLflow then
    refuses to start and says which variable to set.

    Raises:
        AuthConfigError: a password shorter than MLflow's 12-character minimum, or a bad file.
    """
    env = os.environ if env is None else env
    creds: AdminCredentials | None = None
    if env.get(ADMIN_PASSWORD_ENV):
        creds = AdminCredentials(
            env.get(ADMIN_USERNAME_ENV) or "admin", env[ADMIN_PASSWORD_ENV], ADMIN_PASSWORD_ENV
        )
    else:
        path = Path(env.get(AUTH_FILE_ENV) or DEFAULT_AUTH_FILE).expanduser()
        if env.get(AUTH_FILE_ENV) and not path.is_file():
            raise AuthConfigError(f"{AUTH_FILE_ENV}={path}: no such file")
        if path.is_file():
            creds = read_credentials_file(path)
    if creds is not None and creds.password and len(creds.password) < MIN_PASSWORD_CHARS:
        raise AuthConfigError(
            f"admin password from {creds.source} is shorter than {MIN_PASSWORD_CHARS} characters"
        )
    return creds


def flask_secret_key(
    admin: AdminCredentials | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Secret key of the auth app's CSRF protection: env, credentials file, else random."""
    import secrets

    env = os.environ if env is None else env
    return env.get(SECRET_KEY_ENV) or (admin.secret_key if admin else None) or secrets.token_hex(32)


def write_auth_config(
    database_uri: str,
    admin_username: str = "admin",
    default_permission: str = DEFAULT_PERMISSION,
    directory: str | os.PathLike[str] | None = None,
    auth_cache_ttl_s: int = 0,
) -> Path:
    """Write MLflow's ``basic_auth.ini`` (no password in it) into a private directory.

    Args:
        database_uri: SQLAlchemy URI of the auth store (users, permissions).
        admin_username: the admin user MLflow creates on the first start.
        default_permission: what every signed-in user may do on resources they do not own
            (``READ``, ``USE``, ``EDIT``, ``MANAGE``, ``NO_PERMISSIONS``).
        directory: where to write it (created mode 700); default: a fresh temporary directory.
        auth_cache_ttl_s: seconds a verified (user, password) stays cached in the worker
            (MLflow's ``auth_cache_ttl_seconds``; 0 = off). Without it every request pays a
            PBKDF2 check (~0.7 s on a busy 2-core machine); password changes through the API
            apply at once on a single worker, after at most this long on other workers.

    Returns:
        Path of the file (mode 600), for ``MLFLOW_AUTH_CONFIG_PATH``.

    Raises:
        AuthConfigError: unknown ``default_permission``, a directory inside the project, or a
            password in ``database_uri`` (use :func:`split_password` and ``PGPASSWORD``).
    """
    if split_password(database_uri)[1] is not None:
        raise AuthConfigError(
            f"{mask_uri(database_uri)} carries a password: basic_auth.ini must not hold it "
            "(pass it as PGPASSWORD or in ~/.pgpass)"
        )
    if default_permission not in PERMISSIONS:
        raise AuthConfigError(f"default_permission {default_permission!r} not in {PERMISSIONS}")
    if directory is None:
        out_dir = Path(tempfile.mkdtemp(prefix="kappaflow-mlflow-auth-"))
    else:
        out_dir = Path(directory)
        if _inside_project(out_dir):
            raise AuthConfigError(f"auth config directory {out_dir} is inside the project")
        out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    parser = configparser.ConfigParser()
    parser["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": admin_username,
        "authorization_function": AUTHORIZATION_FUNCTION,
        "auth_cache_ttl_seconds": str(int(auth_cache_ttl_s)),
    }
    path = out_dir / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        parser.write(f)
    path.chmod(0o600)
    return path


def auth_database_uri(backend_store_uri: str) -> str:
    """Default auth store next to the tracking store.

    PostgreSQL/MySQL: database ``<name>_auth`` on the same server; SQLite: ``<stem>_auth.db``
    beside the tracking file.

    Raises:
        AuthConfigError: any other backend (set ``auth_database_uri`` explicitly).
    """
    from sqlalchemy.engine import make_url

    url = make_url(backend_store_uri)
    if url.get_backend_name() in ("postgresql", "mysql") and url.database:
        return url.set(database=f"{url.database}_auth").render_as_string(hide_password=False)
    if url.get_backend_name() == "sqlite" and url.database:
        db = Path(url.database)
        return f"sqlite:///{db.with_name(db.stem + '_auth.db')}"
    raise AuthConfigError(
        f"no default auth store for {mask_uri(backend_store_uri)}; set auth_database_uri"
    )


def split_password(uri: str) -> tuple[str, str | None]:
    """Split a SQLAlchemy URI into ``(uri without password, password or None)``.

    Raises:
        AuthConfigError: a password in a non-PostgreSQL URI (only libpq reads ``PGPASSWORD``).
    """
    if "://" not in uri:
        return uri, None
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:  # not a SQLAlchemy URL: nothing to split
        return uri, None
    if url.password is None:
        return uri, None
    if url.get_backend_name() != "postgresql":
        raise AuthConfigError(
            f"{mask_uri(uri)}: a password in the auth store URI only works for PostgreSQL "
            "(PGPASSWORD); configure the driver's own credentials file instead"
        )
    return url._replace(password=None).render_as_string(hide_password=False), str(url.password)


def ensure_database(uri: str) -> bool:
    """Create the PostgreSQL database named in ``uri`` if it does not exist (others: no-op).

    Returns:
        True if it was created.
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}
            ).scalar()
            if not exists:
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        engine.dispose()
    return not exists


def mask_uri(uri: str) -> str:
    """Return ``uri`` with any password replaced by ``***`` (for logs and messages)."""
    if "://" not in uri:
        return uri
    try:
        from sqlalchemy.engine import make_url

        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (s3://, file://...): mask user:pass@
        scheme, rest = uri.split("://", 1)
        netloc, sep, path = rest.partition("/")
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        return f"{scheme}://{netloc}{sep}{path}"


def add_user(tracking_uri: str, username: str, password: str, *, admin: bool = False) -> None:
    """Create a basic-auth user on a running server (as the admin in ``MLFLOW_TRACKING_*``).

    Args:
        tracking_uri: the server (``http://host:port``).
        username: new user.
        password: its password (≥ 12 characters).
        admin: also make the user an admin.
    """
    from mlflow.server import get_app_client

    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthConfigError(f"password shorter than {MIN_PASSWORD_CHARS} characters")
    client = get_app_client("basic-auth", tracking_uri=tracking_uri)
    client.create_user(username=username, password=password)
    if admin:
        client.update_user_admin(username=username, is_admin=True)


def grant(
    tracking_uri: str,
    username: str,
    *,
    model: str | None = None,
    experiment: str | None = None,
    permission: str | None = None,
) -> tuple[str, str, str]:
    """Grant ``username`` a permission on a registered model or an experiment (as an admin).

    With ``default_permission = READ`` this is how a second user may write: the ``register``
    stage's service user needs MANAGE (or EDIT) on the registered model to create versions and
    move aliases; a teammate needs EDIT on the ``kappaflow`` experiment to log runs into it.
    Re-granting replaces the previous permission. Credentials: ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` of an admin (or the resource's MANAGE holder).

    Args:
        tracking_uri: the server (``http://host:port``).
        username: an existing user.
        model: registered model name (exactly one of ``model`` / ``experiment``).
        experiment: experiment name.
        permission: one of :data:`PERMISSIONS`; default MANAGE for a model, EDIT for an
            experiment.

    Returns:
        ``(resource_type, resource_id, permission)`` as granted.

    Raises:
        AuthConfigError: neither or both of model/experiment, an unknown permission or
            experiment.
    """
    from mlflow.server import get_app_client

    if (model is None) == (experiment is None):
        raise AuthConfigError("grant on exactly one of a registered model or an experiment")
    perm = permission or ("MANAGE" if model is not None else "EDIT")
    if perm not in PERMISSIONS:
        raise AuthConfigError(f"permission {perm!r} not in {PERMISSIONS}")
    if model is not None:
        resource_type, resource_id = "registered_model", model
    else:
        from mlflow import MlflowClient

        exp = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(str(experiment))
        if exp is None:
            raise AuthConfigError(f"no experiment named {experiment!r} on {tracking_uri}")
        resource_type, resource_id = "experiment", str(exp.experiment_id)
    client = get_app_client("basic-auth", tracking_uri=tracking_uri)
    client.grant_user_permission(username, resource_type, resource_id, perm)
    return resource_type, resource_id, perm
