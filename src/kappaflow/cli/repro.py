"""``kappaflow repro``: ``dvc repro`` with one overall progress line per stage.

First ``dvc repro --dry`` (same arguments) lists the stages that will run (n); then ``dvc repro``
runs with its output passed through unchanged, and at each ``Running stage '<name>'`` a line

    [kappaflow repro] stage 40 of 51: pretrain@cgcnn | elapsed 5m33s | ~18m10s left

goes to stderr. The estimate sums the duration of this stage and every later one from earlier
runs (``.cache/kappaflow/stage_seconds.json``, the last run of each stage name); for a stage
never run here, its time in the reference run shipped with the package (:data:`REFERENCE_FILE`:
the default profile from a clean clone on 2 CPU cores, so a user's first ``kappaflow repro``
gets a real ETA), else the mean of the stages timed in this run; ``~?`` until there is anything
to go on.

At the end it prints a wall-time table of the stages that ran (:func:`stage_time_table`), writes
it to ``.cache/kappaflow/last_repro.md`` and, when the run succeeded and tracking is on, logs it
as the artifact ``stage_times.md`` (plus ``repro_seconds`` and a per-stage
``stage_seconds.<stage>`` metric) of a run named ``repro`` in the registry/screening experiment,
the end of the pipeline.
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
TABLE_FILE = Path(".cache/kappaflow/last_repro.md")
#: Seconds per stage of the default profile's ``kappaflow repro`` from a clean clone on the 2-core
#: CI machine (2026-12-02; README "What command 1 does"): the estimate for stages never run here.
REFERENCE_FILE = Path(__file__).with_name("reference_stage_seconds.json")


def load_stage_seconds(path: Path) -> dict[str, float]:
    """``{stage: seconds}`` from a JSON file; empty when it is missing or not such a mapping."""
    if not path.is_file():
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


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


def stage_time_table(timed: list[tuple[str, float]], total: float) -> str:
    """Markdown table of the stages run, in run order: stage, wall time, share of the total.

    Args:
        timed: ``(stage, seconds)`` per stage that ran.
        total: wall time of the whole ``dvc repro`` (s), including DVC's own work between stages.
    """
    lines = ["| # | stage | wall time | share |", "|---|---|---|---|"]
    for k, (name, seconds) in enumerate(timed, 1):
        share = 100.0 * seconds / total if total > 0 else 0.0
        lines.append(f"| {k} | {name} | {format_seconds(seconds)} | {share:.0f} % |")
    lines.append(f"| | **total** ({len(timed)} stages) | **{format_seconds(total)}** | |")
    return "\n".join(lines)


def log_stage_times(table: str, timed: list[tuple[str, float]], total: float) -> str | None:
    """Log the table and the times to a ``repro`` MLflow run; return its id (None: not logged).

    Reads ``params.yaml`` for the tracking settings; any failure is reported, never raised (the
    pipeline itself has already finished).
    """
    try:
        import mlflow

        from kappaflow.config import load_params
        from kappaflow.tracking import start_stage_run

        cfg = load_params()
        with start_stage_run(cfg, "repro", run_name="repro", purpose="registry") as run:
            if run is None:
                return None
            mlflow.log_text(table + "\n", "stage_times.md")
            metrics = {"repro_seconds": total}
            for name, seconds in timed:
                key = "stage_seconds." + re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
                metrics[key] = seconds
            mlflow.log_metrics(metrics)
            return str(run.info.run_id)
    except Exception as err:  # noqa: BLE001 - timing is a report, not part of the pipeline
        print(f"[kappaflow repro] stage times not logged to MLflow: {err}", file=sys.stderr)
        return None


def repro_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow repro``; returns ``dvc repro``'s exit status."""
    dvc_args = [a for a in args.dvc_args if a != "--"]
    stages = planned_stages(dvc_args)
    known = load_stage_seconds(REFERENCE_FILE) | load_stage_seconds(TIMES_FILE)  # local wins
    print(f"[kappaflow repro] {len(stages)} stage(s) to run", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    current: tuple[str, float] | None = None
    done: list[float] = []
    ran: set[str] = set()
    k = 0

    timed: list[tuple[str, float]] = []

    def finish(now: float) -> None:
        if current is not None:
            known[current[0]] = now - current[1]
            done.append(now - current[1])
            timed.append((current[0], now - current[1]))

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
            left = estimate_left([m[1], *remaining], known, done)  # this stage included
            line_ = progress_line(k, k + len(remaining), m[1], now - t0, left)
            print(line_, file=sys.stderr, flush=True)
        sys.stdout.write(line)
        sys.stdout.flush()
    rc = proc.wait()
    if rc == 0:
        finish(time.monotonic())
    total = time.monotonic() - t0
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMES_FILE.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    print(
        f"[kappaflow repro] {k} stage(s) run in {format_seconds(total)} "
        f"(dvc repro exit status {rc})",
        file=sys.stderr,
        flush=True,
    )
    if timed:
        table = stage_time_table(timed, total)
        TABLE_FILE.write_text(table + "\n")
        print(table, file=sys.stderr, flush=True)
        if rc == 0:
            run_id = log_stage_times(table, timed, total)
            if run_id:
                print(f"[kappaflow repro] stage times: MLflow run {run_id}", file=sys.stderr)
    return rc
