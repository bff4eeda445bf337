"""MLflow's basic-auth app behind a failed-login limiter (``--app-name kappaflow-auth``).

Every wrong password costs the server a full PBKDF2 check (tens of ms idle, ~0.7 s on a busy
2-core machine): unlimited wrong-password requests slow everyone down and allow password
guessing. :func:`create_app` (entry point ``kappaflow-auth`` of the ``mlflow.app`` group, see
``pyproject.toml``) wraps ``mlflow.server.auth:create_app`` in an ASGI middleware that runs
**before** any credential check:

* a request whose ``(user, password)`` recently succeeded passes at once (its check is cached);
* otherwise, when its client address or its user name has too many recent failed logins
  (HTTP 401), it gets **429** with ``Retry-After`` and no password hash is computed;
* in-flight unverified attempts count as failures until they finish, so a parallel flood cannot
  slip past the limit while the first hashes run; once a user name has failed, its unverified
  attempts run one at a time.

The block after the limit doubles with each further failure (``block_s`` · 2^k, at most
``max_block_s``); a key's failures are forgotten ``window_s`` after its last one, a user's also
after a successful login. Counters live per server worker process (``workers: 1`` by default).
Behind a reverse proxy every client shares the proxy's address: the per-user limit still holds.
Settings come from env ``KAPPAFLOW_AUTH_LOGIN_LIMIT`` (JSON, :class:`LimitSettings` fields),
which :func:`kappaflow.tracking.server.server_env` sets from ``tracking.server.team.login_limit``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

LIMIT_ENV = "KAPPAFLOW_AUTH_LOGIN_LIMIT"
#: Paths MLflow serves without authentication (never limited).
UNPROTECTED_PREFIXES = ("/static", "/favicon.ico", "/health")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class LimitSettings:
    """Failed-login limits.

    Attributes:
        user_failures: failed logins of one user name before it is blocked.
        address_failures: failed logins from one client address before it is blocked (higher:
            several people may share an address).
        window_s: seconds after a key's last failure when its count is forgotten.
        block_s: first block (seconds) once a key reaches its limit; doubles per further failure.
        max_block_s: longest block (seconds).
        known_good_ttl_s: seconds a succeeded ``(user, password)`` skips the limiter.
        max_keys: tracked keys at most (oldest forgotten first: bounded memory under a flood).
    """

    user_failures: int = 5
    address_failures: int = 20
    window_s: float = 300.0
    block_s: float = 1.0
    max_block_s: float = 300.0
    known_good_ttl_s: float = 300.0
    max_keys: int = 10_000

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> LimitSettings:
        """Read :data:`LIMIT_ENV` (JSON object of field values); defaults where absent."""
        raw = (os.environ if env is None else env).get(LIMIT_ENV)
        if not raw:
            return cls()
        given = json.loads(raw)
        names = {f.name for f in fields(cls)}
        unknown = set(given) - names
        if unknown:
            raise ValueError(f"{LIMIT_ENV}: unknown keys {sorted(unknown)}")
        return cls(**given)


@dataclass
class _Entry:
    failures: int = 0
    pending: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class LoginLimiter:
    """Failure counters per key (``addr:…`` / ``user:…``) with exponential back-off.

    Thread-safe; time comes from ``clock`` (seconds, monotonic) so tests can drive it.
    """

    def __init__(
        self, settings: LimitSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or LimitSettings()
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._good: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._hmac_key = secrets.token_bytes(32)

    def _limit(self, key: str) -> int:
        s = self.settings
        return s.user_failures if key.startswith("user:") else s.address_failures

    def _entry(self, key: str, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(last=now)
            while len(self._entries) > self.settings.max_keys:
                self._entries.popitem(last=False)
        elif entry.pending == 0 and now - entry.last > self.settings.window_s:
            entry.failures, entry.blocked_until = 0, 0.0
        self._entries.move_to_end(key)
        return entry

    def _digest(self, username: str, password: str) -> tuple[str, bytes]:
        data = f"{username}\0{password}".encode()
        return username, hmac.new(self._hmac_key, data, hashlib.sha256).digest()

    def is_known_good(self, username: str, password: str) -> bool:
        """Whether these credentials succeeded within ``known_good_ttl_s``."""
        key = self._digest(username, password)
        with self._lock:
            expires = self._good.get(key)
            if expires is None:
                return False
            if expires < self.clock():
                del self._good[key]
                return False
            return True

    def forget(self, username: str, password: str) -> None:
        """Drop known-good credentials (the server rejected them: changed password, deleted)."""
        with self._lock:
            self._good.pop(self._digest(username, password), None)

    def acquire(self, keys: tuple[str, ...]) -> float:
        """Admit one unverified login attempt for ``keys``, or say how long to wait.

        Returns:
            0.0 if admitted (call :meth:`release` with the outcome), else seconds to wait.
        """
        with self._lock:
            now = self.clock()
            wait = 0.0
            for key in keys:
                entry = self._entry(key, now)
                if entry.blocked_until > now:
                    wait = max(wait, entry.blocked_until - now)
                elif entry.pending and (
                    entry.failures + entry.pending >= self._limit(key)  # in flight fill the quota
                    or (
                        key.startswith("user:") and entry.failures
                    )  # after a failure: one at a time
                ):
                    wait = max(wait, self.settings.block_s)
            if wait > 0:
                return wait
            for key in keys:
                self._entries[key].pending += 1
            return 0.0

    def release(
        self, keys: tuple[str, ...], failed: bool, credentials: tuple[str, str] | None = None
    ) -> None:
        """Record the outcome of an attempt admitted by :meth:`acquire`.

        Args:
            keys: the same keys.
            failed: the server answered 401 (wrong user name or password).
            credentials: ``(user, password)``: remembered as known-good on success, forgotten
                on failure.
        """
        s = self.settings
        with self._lock:
            now = self.clock()
            for key in keys:
                entry = self._entry(key, now)
                entry.pending = max(0, entry.pending - 1)
                if failed:
                    entry.failures += 1
                    entry.last = now
                    over = entry.failures - self._limit(key)
                    if over >= 0:
                        block = min(s.max_block_s, s.block_s * 2.0 ** min(over, 60))
                        entry.blocked_until = max(entry.blocked_until, now + block)
                elif key.startswith("user:"):
                    entry.failures, entry.blocked_until = 0, 0.0
            if credentials is not None:
                digest = self._digest(*credentials)
                if failed:
                    self._good.pop(digest, None)
                else:
                    self._good[digest] = now + s.known_good_ttl_s
                    self._good.move_to_end(digest)
                    while len(self._good) > s.max_keys:
                        self._good.popitem(last=False)


def basic_credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """``(user, password)`` of an ASGI request's ``Authorization: Basic …`` header, or None."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None
    return None


class LoginLimitMiddleware:
    """ASGI middleware: 429 + ``Retry-After`` for limited keys, 401s counted as failures.

    Args:
        app: the wrapped ASGI app (MLflow's FastAPI app with basic auth).
        limiter: the counters (default: one from :meth:`LimitSettings.from_env`).
    """

    def __init__(self, app: ASGIApp, limiter: LoginLimiter | None = None) -> None:
        self.app = app
        self.limiter = limiter or LoginLimiter(LimitSettings.from_env())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gate one HTTP request; pass everything else (lifespan, websockets) through."""
        if scope.get("type") != "http" or str(scope.get("path", "")).startswith(
            UNPROTECTED_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        creds = basic_credentials(list(scope.get("headers") or []))
        if creds is None:
            await self.app(scope, receive, send)  # no credentials: 401 without any hash
            return
        status: list[int] = []
        keys: tuple[str, ...] = ()
        settled: list[bool] = []

        def settle(code: int) -> None:
            """Record the attempt's outcome once (before the client can see the response)."""
            if settled or not keys:
                return
            settled.append(True)
            # only a 401 is a failed login; a 5xx / lost response proves nothing either way
            known = creds if code < 500 else None
            self.limiter.release(keys, failed=code == 401, credentials=known)

        async def send_status(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status.append(int(message["status"]))
                settle(status[0])
            await send(message)

        if self.limiter.is_known_good(*creds):  # verified recently: MLflow's cache answers
            await self.app(scope, receive, send_status)
            if status and status[0] == 401:
                self.limiter.forget(*creds)
            return
        client = scope.get("client") or ("unknown", 0)
        keys = (f"addr:{client[0]}", f"user:{creds[0]}")
        wait = self.limiter.acquire(keys)
        if wait > 0:
            await _too_many_requests(send, wait)
            return
        try:
            await self.app(scope, receive, send_status)
        finally:
            settle(status[0] if status else 500)


async def _too_many_requests(send: Send, wait_s: float) -> None:
    retry = str(max(1, math.ceil(wait_s)))
    body = json.dumps(
        {
            "error_code": "TOO_MANY_REQUESTS",
            "message": f"too many failed logins; retry after {retry} s",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", retry.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app() -> Any:
    """App factory of ``mlflow server --app-name kappaflow-auth`` (the ``mlflow.app`` group).

    Returns:
        MLflow's basic-auth app (FastAPI under uvicorn) with :class:`LoginLimitMiddleware` as its
        outermost middleware.

    Raises:
        RuntimeError: MLflow built a Flask-only app (gunicorn/waitress): not supported here.
    """
    from mlflow.server.auth import create_app as mlflow_auth_app

    app = mlflow_auth_app()
    if not hasattr(app, "add_middleware"):
        raise RuntimeError("kappaflow-auth needs MLflow's uvicorn server (no --gunicorn-opts)")
    app.add_middleware(LoginLimitMiddleware)
    return app
