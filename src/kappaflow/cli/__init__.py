"""``kappaflow`` command line: ``config dump``, ``data report`` and the tools of the subpackages.

Stage entry points live in ``pipelines/`` (run by DVC); this CLI holds the user-facing tools.
Subcommands owned by a subpackage (``predict``, ``screen``, ``verify``, ``sweep``, ``server``) are
added by that package's ``add_parser(subparsers)`` (listed in :data:`SUBCOMMAND_MODULES`); those
modules must import only light dependencies at module level so ``kappaflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kappaflow.cli.args import add_command
from kappaflow.logging_utils import setup_logging

#: What ``kappaflow --help`` says (for users; the module docstring is for developers).
DESCRIPTION = """\
kappaflow: lattice thermal conductivity (κ_L, W/m/K) of crystals from the shell.

The pipeline itself runs with DVC (kappaflow repro, or dvc repro; see README.md). These
commands show its configuration and data, predict κ for your structure files with the
registered champion model, check it from phonons (phono3py with a universal potential),
screen structure folders, run hyperparameter sweeps and serve the MLflow UI.
"""

EPILOG = """\
examples:
  kappaflow repro                          dvc repro with a stage k of n / time-left line
  kappaflow predict PbTe.cif POSCAR_Si     κ with intervals for two structure files
  kappaflow verify PbTe.cif                κ from phonons (phono3py, universal potential)
  kappaflow data report                    rows read / valid / quarantined per dataset
  kappaflow config dump > params.yaml      recompose params.yaml after editing conf/

Each command explains itself: kappaflow <command> --help
"""

#: Modules that add their own subcommands: each defines ``add_parser(subparsers) -> None``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "kappaflow.cli.predict",  # predict, screen
    "kappaflow.cli.verify",  # verify
    "kappaflow.cli.sweep",  # sweep
    "kappaflow.cli.repro",  # repro
    "kappaflow.tracking.server",  # server
)


def _config_dump(args: argparse.Namespace) -> int:
    """Print the composed config (``params.yaml`` form) to stdout."""
    from kappaflow.config import compose, to_params_yaml

    sys.stdout.write(to_params_yaml(compose(args.overrides)))
    return 0


def _data_report(args: argparse.Namespace) -> int:
    """Print the per-dataset prepare reports (valid / quarantined / reasons)."""
    from kappaflow.config import load_params
    from kappaflow.layout import interim_dir

    cfg = load_params()
    rows = []
    for name in cfg.datasets:
        report = interim_dir(cfg, name) / "report.json"
        if report.is_file():
            rows.append(json.loads(report.read_text()))
        else:
            rows.append({"dataset": name, "status": "not prepared (run `dvc repro prepare`)"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_data_report(rows))
    return 0


def format_data_report(rows: Sequence[dict]) -> str:
    """Table of ``report.json`` records under a header row (counts are rows of the raw table).

    A dataset prepared from a sample (``datasets.<name>.max_rows``, the smoke experiment) shows
    ``sampled from N`` after its quarantine reasons.
    """
    head = ("dataset", "input", "valid", "quarantined", "quarantine reasons")
    body = []
    for r in rows:
        if "n_input" not in r:
            body.append((r["dataset"], "", "", "", r["status"]))
            continue
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r["reasons"].items())) or "-"
        if r.get("n_raw") is not None and r["n_raw"] != r["n_input"]:
            reasons += f" (sampled from {r['n_raw']:,})"
        body.append(
            (r["dataset"], f"{r['n_input']:,}", f"{r['n_valid']:,}", f"{r['n_quarantined']:,}",
             reasons)
        )  # fmt: skip
    from kappaflow.cli.table import text_table

    return text_table([head, *body], right=(1, 2, 3))


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``kappaflow`` command."""
    parser = argparse.ArgumentParser(
        prog="kappaflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    cfg = add_command(
        sub,
        "config",
        "configuration tools",
        "Configuration tools. The settings live in conf/ (Hydra config groups); params.yaml,\n"
        "which dvc repro reads, is their composed default.",
    )
    cfg_sub = cfg.add_subparsers(dest="action", required=True, metavar="<action>")
    dump = add_command(
        cfg_sub,
        "dump",
        "print the composed config (params.yaml)",
        "Print the configuration composed from conf/, with optional Hydra overrides, in the\n"
        "form of params.yaml.\n\n"
        "examples:\n"
        "  kappaflow config dump > params.yaml                      after editing conf/\n"
        "  kappaflow config dump +experiment=smoke > params.yaml    the minutes-long smoke run",
    )
    dump.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. transfer=freeze")
    dump.set_defaults(func=_config_dump)

    data = add_command(sub, "data", "dataset tools", "Dataset tools.")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="<action>")
    report = add_command(
        data_sub,
        "report",
        "rows read / valid / quarantined per dataset",
        "For every dataset of params.yaml: the rows read from the raw table, how many passed\n"
        "validation and how many were quarantined, with the reasons (from the prepare stage's\n"
        "data/interim/<dataset>/report.json; run dvc repro prepare first).",
    )
    report.add_argument("--json", action="store_true", help="print the reports as JSON")
    report.set_defaults(func=_data_report)

    import importlib
    import importlib.util

    for name in SUBCOMMAND_MODULES:
        package = name.rpartition(".")[0]
        if importlib.util.find_spec(package) and importlib.util.find_spec(name):
            importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kappaflow`` console script."""
    setup_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
