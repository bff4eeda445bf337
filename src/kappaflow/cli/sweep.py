"""``kappaflow sweep``: an Optuna study over a ``conf/sweep`` search space, Hydra-style arguments.

    kappaflow sweep [sweep=<space>] [n_trials=N] [storage=URL] [study=NAME] [workers=K]
                    [rank=R] [<Hydra override> ...]

``sweep=<space>`` picks ``conf/sweep/<space>.yaml``; ``n_trials`` and ``study`` set
``sweep.n_trials`` / ``sweep.study_name``; ``storage`` (wins over ``KAPPAFLOW_SWEEP_STORAGE`` and
``sweep.storage``) is ``sqlite:///file.db``, ``postgresql+psycopg2://user@host:port/db`` or
``journal:file``; ``workers`` local worker processes; ``rank`` of the first one (give each machine
of a team sweep distinct ranks: distinct sampler seeds). Every other ``key=value`` word is a Hydra
override of the base config (e.g. ``+experiment=smoke``, ``sweep.inner.n_splits=5``).
Re-running the same command continues the study (tops it up to ``n_trials``).

Only light modules are imported at module level (``kappaflow --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from kappaflow.cli.args import add_command

#: What ``kappaflow sweep --help`` says.
DESCRIPTION = """\
Run an Optuna hyperparameter study (TPE sampler, median pruning over inner folds) over a
search space of conf/sweep/. Each trial is scored by its inner cross-validated log10-MAE on
sweep.dataset, logged as an MLflow run under the sweep's parent run; the best trial is written
to conf/experiment/best_<study>.yaml. Re-running the same command continues the study up to
n_trials.

arguments (key=value words):
  sweep=<space>   search space conf/sweep/<space>.yaml (default, strategy)
  n_trials=N      trials the study should have in total
  study=NAME      study name (default: set by the space, e.g. finetune_d1)
  storage=URL     sqlite:///file.db, postgresql+psycopg2://user@host:port/db or journal:file
                  (default: KAPPAFLOW_SWEEP_STORAGE, else sweep.storage)
  workers=K       worker processes on this machine
  rank=R          rank of the first worker; give each machine of a team sweep distinct ranks
  anything else   a Hydra override of the config, e.g. +experiment=smoke

examples:
  kappaflow sweep n_trials=20 workers=2
  kappaflow sweep sweep=strategy n_trials=30
  optuna-dashboard sqlite:///optuna.db        watch it in the browser
"""

#: Shorthand keys -> where they go (``None``: runtime only, not a config key).
SHORTHANDS = {
    "n_trials": "sweep.n_trials",
    "study": "sweep.study_name",
    "storage": None,
    "workers": None,
    "rank": None,
}


def add_parser(subparsers: Any) -> None:
    """Add the ``sweep`` subcommand to the ``kappaflow`` parser."""
    p = add_command(
        subparsers,
        "sweep",
        "hyperparameter sweep (Optuna TPE + pruning, MLflow run per trial)",
        DESCRIPTION,
    )
    p.add_argument("args", nargs="*", help="sweep=<space> n_trials=N storage=URL ... overrides")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=sweep_command)


def parse_args(words: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``key=value`` words into Hydra overrides and runtime options.

    Returns:
        ``(overrides, options)`` with options ``storage`` (str | None), ``workers`` and
        ``rank`` (int).

    Raises:
        ValueError: a word without ``=``, or a non-integer / out-of-range workers, rank, n_trials.
    """
    overrides: list[str] = []
    options: dict[str, Any] = {"storage": None, "workers": 1, "rank": 0}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise ValueError(f"argument {word!r} is not of the form key=value")
        if key not in SHORTHANDS:
            overrides.append(word)
            continue
        if key == "storage":
            options["storage"] = value
            continue
        if key == "study":
            overrides.append(f"{SHORTHANDS[key]}={value}")
            continue
        try:
            number = int(value)
        except ValueError as exc:
            raise ValueError(f"{key} must be an integer, got {value!r}") from exc
        if number < (1 if key == "workers" else 0):
            raise ValueError(f"{key} must be >= {1 if key == 'workers' else 0}, got {number}")
        if key == "n_trials":
            overrides.append(f"{SHORTHANDS[key]}={number}")
        else:
            options[key] = number
    return overrides, options


def format_report(report: Any) -> str:
    """Human-readable summary of a :class:`kappaflow.sweep.runner.SweepReport`."""
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(report.states.items()))
    lines = [
        f"study {report.study_name} ({report.storage}): {states}",
        f"wall time {report.wall_s:.0f} s",
    ]
    if report.best_number is None:
        lines.append("no complete trial yet")
    else:
        lines.append(
            f"best trial {report.best_number}: inner-CV log10-MAE {report.best_value:.4f}"
            + (
                f" (baseline, config defaults: {report.baseline_value:.4f})"
                if report.baseline_value is not None
                else ""
            )
        )
        lines += [f"  {k}={v}" for k, v in report.best_overrides.items()]
    if report.best_file:
        lines.append(f"best overrides written to {report.best_file}")
    lines += [f"worker {w.worker}: {dict(w.states)} ({w.stopped})" for w in report.workers]
    return "\n".join(lines)


def run(words: Sequence[str], params_file: str | None = None, as_json: bool = False) -> int:
    """Run a sweep from ``key=value`` words; print the summary; return the exit code.

    Args:
        words: ``sweep=<space> n_trials=N storage=URL ...`` (see the module docstring).
        params_file: None: compose ``conf/`` with Hydra; a ``params.yaml``: load it and apply
            the overrides as dot-list (the DVC entry ``pipelines/sweep.py``).
        as_json: print the report as JSON.

    Returns:
        0 if the study has a complete trial, 1 if not, 2 for bad arguments.
    """
    import dataclasses

    from kappaflow.sweep.objective import ConfigSource
    from kappaflow.sweep.runner import run_sweep

    try:
        overrides, options = parse_args(words)
    except ValueError as exc:
        print(f"kappaflow sweep: {exc}", file=sys.stderr)
        return 2
    report = run_sweep(
        ConfigSource(tuple(overrides), params_file),
        storage=options["storage"],
        workers=options["workers"],
        rank=options["rank"],
    )
    if as_json:
        print(json.dumps(dataclasses.asdict(report), indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report.best_number is not None else 1


def sweep_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow sweep``; exit 0 if the study has a complete trial, else 1."""
    return run(args.args, as_json=args.json)
