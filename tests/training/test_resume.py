"""Crash recovery: a real SIGKILL mid-epoch, then the same command resumes from last.ckpt."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import kappa_testkit as kt

SCRIPT = Path(__file__).with_name("resume_script.py")


def test_kill_minus_9_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    crash_dir = tmp_path / "crash"
    cmd = [sys.executable, str(SCRIPT), str(crash_dir)]
    env = {**os.environ, "KAPPAFLOW_TEST_KILL_AT": "3:1"}  # epoch 3, batch 1
    crash = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert crash.returncode == -signal.SIGKILL, crash.stdout + crash.stderr
    assert (crash_dir / "killed").is_file() and not (crash_dir / "result.json").exists()
    assert (crash_dir / "checkpoints" / "last.ckpt").is_file()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = json.loads((crash_dir / "result.json").read_text())

    # uninterrupted reference (same code and config, single-threaded like the script)
    ref = kt.run_training(tmp_path / "ref", kt.resume_cfg(), multi=True)
    expected = kt.result_summary(ref)
    assert resumed["resumed"] and not expected["resumed"]
    assert expected["epochs_run"] == 6 and expected["first_epoch"] == 0
    assert resumed["first_epoch"] == 3 and resumed["epochs_run"] == 3
    assert expected["lr"][0] < 0.03 / 4  # the plateau schedule cut the lr after the crash point
    for key in ("best_val_loss", "val", "test", "weights_sum", "current_epoch", "lr"):
        assert resumed[key] == expected[key], key
