"""Wrong-password flood against the team server: a normal client's latency, with/without limits.

Starts ``kappaflow server --team``-equivalent servers (basic auth behind the failed-login
limiter, :mod:`kappaflow.tracking.auth_app`) on a free loopback port, SQLite stores in a temp
directory (or PostgreSQL with ``--backend-store-uri``), one after the other:

* ``limited``: the default ``login_limit``;
* ``unlimited``: MLflow's stock ``basic-auth`` app (what main ran: every wrong password pays
  the full PBKDF2 hash).

For each it creates a user, measures a normal client's request latency idle (``--idle``
sequential ``GET experiments/search``), then again while ``--wrong`` wrong-password requests are
sent by ``--flood-threads`` threads at ``--rate`` per second in all (bounded: a fixed number of
requests, loopback only), and prints p50/p95 (ms) and the flood's status codes. Times are wall
clock on a shared machine.

Usage::

    python benchmarks/auth_flood.py [--wrong 80] [--idle 40] [--flood-threads 4] [--rate 25]
        [--only limited|unlimited] [--backend-store-uri postgresql+psycopg2://…]
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from kappaflow.tracking.auth import AdminCredentials, add_user
from kappaflow.tracking.server import ServerSettings, start_server

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def status_of(url: str, user: str, password: str) -> tuple[int, float]:
    """GET ``url`` with basic auth; return (HTTP status, seconds)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    return code, time.perf_counter() - t0


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in ms."""
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return statistics.median(ms), p95


def run_case(name: str, app_name: str, args: argparse.Namespace, root: Path) -> None:
    """Start a server with app ``app_name``, measure idle and flooded latency, print, stop."""
    from kappaflow.layout import project_root
    from kappaflow.tracking import server as server_module

    server_module.AUTH_APP_NAME = app_name  # read by server_command at start

    port = free_port()
    work = root / name
    backend = args.backend_store_uri or f"sqlite:///{work / 'mlflow.db'}"
    work.mkdir(parents=True)
    admin_pw, user_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    settings = ServerSettings(
        backend_store_uri=backend,
        artifacts_destination=str(work / "artifacts"),
        port=port,
        allowed_hosts=(f"127.0.0.1:{port}",),
        cors_allowed_origins=(f"http://127.0.0.1:{port}",),
        auth=True,
    )
    assert project_root()  # the pid file goes to <project>/.cache/kappaflow
    server = start_server(
        settings,
        admin=AdminCredentials("admin", admin_pw, "benchmark"),
        log_file=work / "server.log",
    )
    try:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
            "admin",
            admin_pw,
        )
        add_user(server.url, "alice", user_pw)
        url = server.url + SEARCH
        for _ in range(3):  # warm: the login cache knows alice
            status_of(url, "alice", user_pw)
        idle = [status_of(url, "alice", user_pw)[1] for _ in range(args.idle)]
        codes: collections.Counter[int] = collections.Counter()
        todo = iter(range(args.wrong))
        lock = threading.Lock()

        t_start = time.perf_counter()

        def attacker() -> None:
            while True:
                with lock:
                    k = next(todo, None)
                    if k is None:
                        return
                time.sleep(max(0.0, t_start + k / args.rate - time.perf_counter()))
                code, _ = status_of(url, "alice", "wrong-" + secrets.token_hex(6))
                with lock:
                    codes[code] += 1

        threads = [threading.Thread(target=attacker) for _ in range(args.flood_threads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        flooded = []
        while any(t.is_alive() for t in threads) or len(flooded) < args.idle:
            code, dt = status_of(url, "alice", user_pw)
            assert code == 200, code
            flooded.append(dt)
        for t in threads:
            t.join()
        flood_s = time.perf_counter() - t0
        (i50, i95), (f50, f95) = percentiles(idle), percentiles(flooded)
        print(
            f"{name:9s} idle p50 {i50:6.0f} ms p95 {i95:6.0f} ms | during {args.wrong} wrong "
            f"passwords ({flood_s:.1f} s, {len(flooded)} requests) p50 {f50:6.0f} ms "
            f"p95 {f95:6.0f} ms (x{f95 / i95:.2f}) | flood codes {dict(sorted(codes.items()))}",
            flush=True,
        )
    finally:
        server.stop()


def main() -> int:
    """Run the cases; print one line each."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--wrong", type=int, default=80, help="wrong-password requests (bounded)")
    p.add_argument("--idle", type=int, default=40, help="normal requests per measurement")
    p.add_argument("--flood-threads", type=int, default=4)
    p.add_argument("--rate", type=float, default=25.0, help="wrong passwords per second (all)")
    p.add_argument("--only", choices=("limited", "unlimited"))
    p.add_argument("--backend-store-uri", help="default: SQLite in a temp dir")
    args = p.parse_args()
    if not 1 <= args.wrong <= 1000:
        p.error("--wrong must be in [1, 1000]")
    cases = {"limited": "kappaflow-auth", "unlimited": "basic-auth"}
    with tempfile.TemporaryDirectory(prefix="kappaflow-auth-flood-") as tmp:
        for name, app_name in cases.items():
            if args.only in (None, name):
                run_case(name, app_name, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
