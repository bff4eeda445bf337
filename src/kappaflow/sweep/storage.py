"""Optuna storages of sweeps, from a URL, and the per-study lock that keeps trial counts exact.

URLs:

* ``sqlite:///optuna.db`` — embedded default, one machine (relative paths: project root).
* ``postgresql+psycopg2://user@host:port/db`` — a shared server: workers on several machines
  join the same study.
* ``journal:optuna.journal`` — Optuna's append-only journal file (``JournalFileBackend``): many
  processes on one machine (or a shared file system); relative paths: project root.

RDB storages (SQLite, PostgreSQL) run Optuna's heartbeat: a trial whose worker stopped sending
heartbeats for ``grace_s`` seconds is marked FAIL by the next worker that looks, and the stale
callback re-queues it. Optuna 5's ``JournalStorage`` has no heartbeat; there the runner fails
RUNNING trials whose worker process on *this* host is gone (see
:func:`kappaflow.sweep.runner.fail_dead_local_trials`).

:func:`study_lock` serializes the few read-count-enqueue steps that top a study up to
``n_trials`` (PostgreSQL advisory lock; a lock file next to a SQLite database or journal), so
workers started at the same moment on different machines never enqueue the same slots twice.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kappaflow.layout import project_root

if TYPE_CHECKING:
    import optuna

JOURNAL_PREFIX = "journal:"
KINDS = ("sqlite", "postgresql", "journal")


class StorageError(ValueError):
    """An unsupported or malformed storage URL."""


def storage_kind(url: str) -> str:
    """Return ``sqlite``, ``postgresql`` or ``journal`` for a storage URL.

    Raises:
        StorageError: any other scheme.
    """
    if url.startswith(JOURNAL_PREFIX):
        if not url[len(JOURNAL_PREFIX) :]:
            raise StorageError("journal storage needs a file: journal:<path>")
        return "journal"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base in ("sqlite", "postgresql"):
        return base
    raise StorageError(
        f"unsupported sweep storage {redact(url)!r}: use sqlite:///<file>, "
        "postgresql+psycopg2://<user>@<host>:<port>/<db> or journal:<file>"
    )


def resolve_url(url: str) -> str:
    """Make relative SQLite / journal paths absolute (relative to the project root)."""
    kind = storage_kind(url)
    if kind == "journal":
        path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
        return JOURNAL_PREFIX + str(path if path.is_absolute() else project_root() / path)
    if kind == "sqlite":
        prefix, _, rest = url.partition(":///")
        if rest and rest != ":memory:" and not rest.startswith("/"):
            return f"{prefix}:///{project_root() / rest}"
    return url


def redact(url: str) -> str:
    """Return the URL with any password replaced by ``***`` (for logs and MLflow tags)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never fail on logging a URL
        return url.split("://", 1)[0] + "://***"


def _file_of(url: str) -> Path | None:
    kind = storage_kind(url)
    if kind == "journal":
        return Path(url[len(JOURNAL_PREFIX) :])
    if kind == "sqlite":
        rest = url.partition(":///")[2]
        return None if not rest or rest == ":memory:" else Path(rest)
    return None


def open_storage(
    url: str,
    *,
    heartbeat_interval_s: int | None = None,
    grace_s: int | None = None,
    stale_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """Open the Optuna storage of ``url`` (absolute, see :func:`resolve_url`).

    Args:
        url: storage URL.
        heartbeat_interval_s: RDB: seconds between heartbeats of a running trial (None: off).
        grace_s: RDB: seconds without heartbeat after which a running trial is failed.
        stale_callback: RDB: called with each trial failed for a missing heartbeat (e.g.
            ``RetryHeartbeatStaleTrialCallback``).
    """
    import optuna

    kind = storage_kind(url)
    path = _file_of(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert path is not None
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if kind == "sqlite" else {"pool_pre_ping": True}
    )
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval_s,
        grace_period=grace_s,
        heartbeat_stale_trial_callback=stale_callback,
    )


def supports_heartbeat(url: str) -> bool:
    """Whether the storage of ``url`` runs Optuna's heartbeat (RDB storages)."""
    return storage_kind(url) in ("sqlite", "postgresql")


def _lock_key(study_name: str) -> int:
    """Return a signed 64-bit ``pg_advisory_lock`` key derived from the study name."""
    digest = hashlib.sha256(f"kappaflow.sweep:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(url: str, study_name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on ``study_name`` across processes and machines.

    PostgreSQL: a session advisory lock (released when the connection closes, so a killed
    holder never blocks the study). SQLite / journal: a lock file beside the database.

    Raises:
        TimeoutError: the lock was not obtained within ``timeout_s`` (file locks).
    """
    kind = storage_kind(url)
    if kind == "postgresql":
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(study_name)}
                )
                try:
                    yield
                finally:
                    conn.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                        {"k": _lock_key(study_name)},
                    )
        finally:
            engine.dispose()
        return
    path = _file_of(url)
    if path is None:  # in-memory SQLite: one process only
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".sweep.lock")
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as exc:
        raise TimeoutError(f"could not lock study {study_name!r} ({lock.lock_file})") from exc
    try:
        yield
    finally:
        lock.release()
