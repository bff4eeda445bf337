"""``kappaflow`` command line: ``config dump``, ``data report`` and the tools of the subpackages.

Stage entry points live in ``pipelines/`` (run by DVC); this CLI holds the user-facing tools.
Subcommands owned by a subpackage (``predict``, ``screen``, ``sweep``, ``server``) are added by that
package's ``add_parser(subparsers)`` (listed in :data:`SUBCOMMAND_MODULES`); those modules must
import only light dependencies at module level so ``kappaflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kappaflow.logging_utils import setup_logging

#: Modules that add their own subcommands: each defines ``add_parser(subparsers) -> None``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "kappaflow.cli.predict",  # predict, screen
    "kappaflow.cli.sweep",  # sweep
    "kappaflow.tracking.server",  # server
)


def _config_dump(args: argparse.Namespace) -> int:
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
    for r in rows:
        if "n_input" not in r:
            print(f"{r['dataset']:<24} {r['status']}")
            continue
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r["reasons"].items())) or "-"
        print(
            f"{r['dataset']:<24} in={r['n_input']:>7} valid={r['n_valid']:>7} "
            f"quarantined={r['n_quarantined']:>6}  {reasons}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``kappaflow`` command."""
    parser = argparse.ArgumentParser(prog="kappaflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    dump = cfg_sub.add_parser("dump", help="print the Hydra-composed config (params.yaml)")
    dump.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. transfer=freeze")
    dump.set_defaults(func=_config_dump)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="action", required=True)
    report = data_sub.add_parser("report", help="valid/quarantined counts per dataset")
    report.add_argument("--json", action="store_true", help="print JSON")
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
