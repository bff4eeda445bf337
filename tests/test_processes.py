"""Workers armed with die_with_parent end when their parent is killed; unarmed ones do not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import multiprocessing as mp, sys, time
from pathlib import Path

def child(pid_file, armed):
    if armed:
        from kappaflow.processes import die_with_parent
        assert die_with_parent()
    Path(pid_file).write_text(str(__import__("os").getpid()))
    time.sleep(120)

if __name__ == "__main__":
    proc = mp.get_context("spawn").Process(target=child, args=(sys.argv[1], sys.argv[2] == "1"))
    proc.start()
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # an unreaped zombie has ended


def _orphan_after_parent_killed(tmp_path: Path, armed: bool) -> int:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    pid_file = tmp_path / f"child-{int(armed)}.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file), str(int(armed))])
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_armed_worker_dies_with_its_killed_parent_unarmed_one_survives(tmp_path):
    armed = _orphan_after_parent_killed(tmp_path, armed=True)
    unarmed = _orphan_after_parent_killed(tmp_path, armed=False)
    try:
        deadline = time.monotonic() + 10
        while _alive(armed) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(armed), "the armed worker outlived its SIGKILLed parent"
        assert _alive(unarmed), "control: an unarmed worker should keep running (test is blind)"
    finally:
        for pid in (armed, unarmed):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
