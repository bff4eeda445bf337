"""Helpers of the server/browser tests: binaries or skip (fail in CI), PostgreSQL, Chromium.

Locally a missing binary (PostgreSQL server, Debian's ``chromium`` / ``chromium-driver``) skips
the test with the reason; with ``CI=true`` it fails instead (``.ci/run`` installs them).
Screenshots and timings go to ``$KAPPAFLOW_TEST_ARTIFACTS/ui`` (default ``reports/ui``).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
INSTALL_HINT = "apt-get install -y chromium chromium-driver postgresql"


def in_ci() -> bool:
    """``CI=true``: missing binaries are failures, not skips."""
    return os.environ.get("CI", "").lower() == "true"


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (CI) with ``reason`` unless ``ok``."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI must provide it ({INSTALL_HINT})", pytrace=False)
    pytest.skip(f"{reason} ({INSTALL_HINT})")


def artifacts_dir() -> Path:
    """Where screenshots/timings of the UI tests are kept (CI keeps this folder)."""
    base = os.environ.get("KAPPAFLOW_TEST_ARTIFACTS")
    out = Path(base) / "ui" if base else REPO / "reports" / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


def record_timing(key: str, value: Any) -> None:
    """Merge ``{key: value}`` into ``<artifacts>/timings.json``."""
    path = artifacts_dir() / "timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        fields = _proc_stat(int(Path(stat).parent.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(Path(stat).parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of ``pid`` and its descendants."""
    total_kb = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total_kb += sum(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
    return total_kb / 1024


def alive(pids: Sequence[int]) -> list[int]:
    """Those of ``pids`` that still run (zombies count as gone)."""
    out = []
    for p in pids:
        fields = _proc_stat(p)
        if fields is not None and fields[0] != "Z":
            out.append(p)
    return out


@contextmanager
def postgres() -> Iterator[str]:
    """Run a throw-away PostgreSQL (``scripts/postgres.sh``); yield its ``mlflow`` database URL."""
    require(bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")), "PostgreSQL server not installed")
    # a fresh directory directly in /tmp: as root the server runs as `postgres`, which must be
    # able to reach it (pytest's and mkdtemp's directories are private to root)
    pg_dir = Path(tempfile.gettempdir()) / f"kappaflow-pg-test-{secrets.token_hex(6)}"
    port = free_port()
    script = str(REPO / "scripts" / "postgres.sh")
    res = subprocess.run(
        ["bash", script, "start", str(pg_dir), str(port)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, f"postgres.sh start failed: {res.stdout}\n{res.stderr}"
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(["bash", script, "stop", str(pg_dir)], timeout=120, check=False)
        shutil.rmtree(pg_dir, ignore_errors=True)


def kappaflow_cmd(*args: str) -> list[str]:
    """``kappaflow <args>`` with this interpreter."""
    return [sys.executable, "-m", "kappaflow.cli", *args]


@contextmanager
def server_process(
    args: Sequence[str], env: dict[str, str], log_path: Path, url: str, timeout_s: float = 180
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Run ``kappaflow server <args>`` in its own session; yield (process, seconds to healthy).

    The server is stopped with SIGTERM on exit (SIGKILL of its group if that fails).
    """
    from kappaflow.tracking.server import health

    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            kappaflow_cmd("server", *args),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not health(url, timeout=1.0):
            if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                pytest.fail(f"server did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield proc, time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def chromium(*, offline: bool = False, size: tuple[int, int] = (1400, 900)) -> Any:
    """A headless Debian Chromium driven by Selenium + chromedriver.

    Args:
        offline: resolve no host name at all (``--host-resolver-rules``): a page that needs a
            CDN cannot load it.
        size: window size (px).
    """
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} not installed")
    require(Path(CHROMEDRIVER).is_file(), f"{CHROMEDRIVER} not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={size[0]},{size[1]}")
    profile = tempfile.mkdtemp(prefix="kappaflow-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    if offline:
        opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    quit_browser = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean  # the profile directory goes with the browser
    return driver


def use_basic_auth(driver: Any, username: str, password: str) -> None:
    """Send ``Authorization: Basic …`` with every request of the page (CDP)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def wait_for_texts(driver: Any, texts: Sequence[str], timeout_s: float = 60) -> str:
    """Wait until every one of ``texts`` is in the page's visible text; return that text."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # page still loading
            body = ""
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    pytest.fail(f"{missing} not shown at {driver.current_url}; page text:\n{body[:2000]}")
