"""``kappaflow predict FILE...`` and ``kappaflow screen``: the champion κ model from the shell.

``predict`` prints κ (W/m/K) with its ±1σ band, σ (std over ensemble members of log10 κ) and
the domain flag for each CIF/POSCAR file, using ``models:/<registry.model_name>@champion`` from
the tracking store of ``params.yaml`` (or ``--model-uri``). A file that cannot be read or
scored prints ``ERROR <file>: <reason>`` on stderr; the other files are still predicted, and the
exit code is 1 if any file failed.

``screen`` runs the ``screen`` stage (:func:`kappaflow.screen.stage.screen_stage`), with
extra structure directories (``--dir``, repeatable).

Only light modules are imported at module level (``kappaflow --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kappaflow.cli.args import add_command, add_model_uri


def add_parser(subparsers: Any) -> None:
    """Add the ``predict`` and ``screen`` subcommands to the ``kappaflow`` parser."""
    p = add_command(
        subparsers, "predict", "κ ± σ of CIF/POSCAR files with the champion model", __doc__
    )
    p.add_argument("files", nargs="+", help="CIF or POSCAR/CONTCAR/*.vasp files")
    add_model_uri(p)
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.set_defaults(func=predict_command)

    s = subparsers.add_parser(
        "screen",
        help="score the screening pool (+ structure directories) with the champion model",
    )
    s.add_argument(
        "--dir", dest="dirs", action="append", default=[], help="a directory of CIF/POSCAR files"
    )
    s.add_argument(
        "--only-dirs", action="store_true", help="score only --dir files, not the datasets"
    )
    add_model_uri(s)
    s.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. screen.top_n=50")
    s.set_defaults(func=screen_command)


def _load_cfg() -> Any:
    from kappaflow.config import load_params

    try:
        return load_params()
    except FileNotFoundError:
        return None


def _cif_text(path: Path) -> str:
    """Return the file's CIF text (POSCARs are converted with pymatgen ``CifWriter``).

    Raises:
        CifError, StructureFileError: the file cannot be read as a structure.
    """
    from kappaflow.structure.cif import parse_structure_file

    crystal = parse_structure_file(path)
    if path.name.lower().endswith((".cif", ".mcif")):
        return path.read_text(encoding="utf-8", errors="replace")
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(crystal.to_structure()))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of successful prediction rows."""
    head = ("file", "formula", "κ (W/m/K)", "±1σ band (W/m/K)", "σ(log10)", "in domain")
    body = []
    for r in rows:
        dom = "yes" if r["in_domain"] else f"no ({r['ood_reason']})"
        sigma = r["sigma_log10"]
        band = f"[{_fmt(r['kappa_lo'])}, {_fmt(r['kappa_hi'])}]"
        body.append(
            (r["id"], r["formula"], _fmt(r["kappa"]), band, f"{sigma:.3f}", dom)  # noqa: E501
        )
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *body]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]))
    return "\n".join(lines)


def predict_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow predict``; returns the exit code (1 if any file failed)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["KAPPAFLOW_DEVICE"] = args.device
    import mlflow
    import pandas as pd

    from kappaflow.structure.cif import CifError, StructureFileError
    from kappaflow.tracking.runs import quiet_mlflow, tracking_uri

    cfg = _load_cfg()
    if args.model_uri:
        uri = args.model_uri
    elif cfg is not None:
        uri = f"models:/{cfg.registry.model_name}@champion"
    else:
        print("ERROR: no params.yaml here; pass --model-uri", file=sys.stderr)
        return 2
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MLflow raises many types (missing alias, store errors)
        print(f"ERROR: cannot load model {uri}: {exc}", file=sys.stderr)
        return 2

    failed = False
    ids, texts = [], []
    for name in args.files:
        try:
            texts.append(_cif_text(Path(name)))
            ids.append(name)
        except CifError as exc:
            print(f"ERROR {name}: {exc.reason.value}: {exc.detail}", file=sys.stderr)
            failed = True
        except (StructureFileError, OSError) as exc:
            print(f"ERROR {name}: {exc}", file=sys.stderr)
            failed = True
    rows: list[dict[str, Any]] = []
    if texts:
        result = model.predict(pd.DataFrame({"id": ids, "cif": texts}))
        rows = result.to_dict(orient="records")
    good = []
    for r in rows:
        if r["error"]:
            print(f"ERROR {r['id']}: {r['error']}", file=sys.stderr)
            failed = True
        else:
            good.append(r)
    if args.json:
        print(json.dumps([_plain(r) for r in rows], indent=1))
    elif good:
        print(format_table(good))
        print(f"model: {uri}; σ = std over ensemble members of log10 κ; band = κ ×/÷ 10^σ")
    return 1 if failed else 0


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    import math

    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def screen_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow screen``; returns 0 (errors raise)."""
    from kappaflow.config import load_params
    from kappaflow.stages.screen import screen_stage

    cfg = load_params(overrides=args.overrides)
    summary = screen_stage(cfg, *args.dirs, model_uri=args.model_uri, only_dirs=args.only_dirs)
    print(
        json.dumps(
            {k: summary[k] for k in ("n_scored", "n_quarantined", "n_ood", "throughput_per_s")}
        )
    )
    print(f"outputs in {cfg.screen.out_dir}/")
    return 0
