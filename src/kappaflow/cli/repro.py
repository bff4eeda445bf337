"""``kappaflow repro``: ``dvc repro`` with one overall progress line per stage.

First ``dvc repro --dry`` (same arguments) lists the stages that will run (n); then ``dvc repro``
runs with its output passed through unchanged, and at each ``Running stage '<name>'`` a line

    [kappaflow repro] stage 3 of 41: featurize@mp_eform_bandgap | elapsed 4m05s | ~21m left

goes to stderr. The estimate sums each remaining stage's duration from earlier runs
(``.cache/kappaflow/stage_seconds.json``, the last run of each stage name) and, for stages never
timed, the mean of the stages timed in this run; ``~?`` until there is anything to go on.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kappaflow.cli.args import add_command

DESCRIPTION = """\
Run dvc repro (same arguments) and print, as each stage starts, which stage it is of how many,
the time elapsed and an estimate of the time left (from the durations of earlier runs). DVC's
own output is shown unchanged; the progress lines go to stderr.

examples:
  kappaflow repro                      the whole pipeline on params.yaml
  kappaflow repro prepare featurize    the data stages only
"""

RUNNING = re.compile(r"^Running stage '([^']+)'")
CACHED = re.compile(r"^Stage '([^']+)' is cached")
TIMES_FILE = Path(".cache/kappaflow/stage_seconds.json")


def add_parser(subparsers: Any) -> None:
    """Add the ``repro`` subcommand to the ``kappaflow`` parser."""
    p = add_command(
        subparsers, "repro", "dvc repro with a stage k of n / elapsed / time-left line", DESCRIPTION
    )
    p.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for dvc repro")
    p.set_defaults(func=repro_command)


def planned_stages(dvc_args: list[str]) -> list[str]:
    """Return the stages ``dvc repro <dvc_args>`` would run, in order (``dvc repro --dry``).

    Stages DVC restores from its run cache ("is cached - skipping run") are not counted: they
    print no ``Running stage`` line in the real run.
    """
    out = subprocess.run(
        ["dvc", "repro", "--dry", *dvc_args], capture_output=True, text=True, check=False
    )
    lines = out.stdout.splitlines()
    cached = {m[1] for line in lines if (m := CACHED.match(line))}
    planned = [m[1] for line in lines if (m := RUNNING.match(line)) and m[1] not in cached]
    # A dry run does not see stages downstream of outputs that do not exist yet; `dvc status`
    # lists every stage whose deps or outs changed or are missing (targets only, if given).
    targets = [a for a in dvc_args if not a.startswith("-")]
    status = subprocess.run(
        ["dvc", "status", "--json", *targets], capture_output=True, text=True, check=False
    )
    try:
        changed = list(json.loads(status.stdout or "{}"))
    except ValueError:
        changed = []
    return planned + [
        s for s in changed if s not in planned and s not in cached and ".dvc" not in s
    ]


def format_seconds(seconds: float) -> str:
    """Return ``1h02m``, ``4m05s`` or ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def estimate_left(remaining: list[str], known: dict[str, float], done: list[float]) -> str:
    """Return ``~<time> left`` for the stages still to run (``~?`` without any timing)."""
    if not remaining:
        return "last stage"
    fallback = sum(done) / len(done) if done else None
    total = 0.0
    for name in remaining:
        if name in known:
            total += known[name]
        elif fallback is not None:
            total += fallback
        else:
            return "~? left"
    return f"~{format_seconds(total)} left"


def progress_line(k: int, n: int, name: str, elapsed: float, left: str) -> str:
    """Return the progress line for stage ``k`` (1-based) of ``n``, named ``name``."""
    n = max(n, k)
    return (
        f"[kappaflow repro] stage {k} of {n}: {name} | elapsed {format_seconds(elapsed)} | {left}"
    )


def repro_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow repro``; returns ``dvc repro``'s exit status."""
    dvc_args = [a for a in args.dvc_args if a != "--"]
    stages = planned_stages(dvc_args)
    known: dict[str, float] = {}
    if TIMES_FILE.is_file():
        try:
            known = {str(k): float(v) for k, v in json.loads(TIMES_FILE.read_text()).items()}
        except (ValueError, AttributeError):
            known = {}
    print(f"[kappaflow repro] {len(stages)} stage(s) to run", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    current: tuple[str, float] | None = None
    done: list[float] = []
    ran: set[str] = set()
    k = 0

    def finish(now: float) -> None:
        if current is not None:
            known[current[0]] = now - current[1]
            done.append(now - current[1])

    proc = subprocess.Popen(
        ["dvc", "repro", *dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = RUNNING.match(line)
        if m:
            now = time.monotonic()
            finish(now)
            k += 1
            current = (m[1], now)
            ran.add(m[1])
            remaining = [s for s in stages if s not in ran]
            left = estimate_left(remaining, known, done)
            line_ = progress_line(k, k + len(remaining), m[1], now - t0, left)
            print(line_, file=sys.stderr, flush=True)
        sys.stdout.write(line)
        sys.stdout.flush()
    rc = proc.wait()
    if rc == 0:
        finish(time.monotonic())
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMES_FILE.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    print(
        f"[kappaflow repro] {k} stage(s) run in {format_seconds(time.monotonic() - t0)} "
        f"(dvc repro exit status {rc})",
        file=sys.stderr,
        flush=True,
    )
    return rc
