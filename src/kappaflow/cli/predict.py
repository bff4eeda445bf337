"""``kappaflow predict FILE...`` and ``kappaflow screen``: the champion κ model from the shell.

``predict`` prints κ (W/m/K) with its calibrated 68 % and 95 % intervals (conformal, from the
registered strategy's out-of-fold residuals), σ (std over ensemble members of log10 κ) and
the domain flag for each CIF/POSCAR file, using ``models:/<registry.model_name>@champion`` from
the tracking store of ``params.yaml`` (or ``--model-uri``, a ``models:/`` version or alias). Only
the model's ensemble data is downloaded and it is used only if its sha256 matches the version's
``ensemble_sha256`` tag and, for the version ``models/champion.json`` pins, that record; no code
stored with the model runs (:mod:`kappaflow.registry.trust`). A file that cannot be read or
scored prints ``ERROR <file>: <reason>`` on stderr; the other files are still predicted, and the
exit code is 1 if any file failed.

``screen`` runs the ``screen`` stage (:func:`kappaflow.stages.screen.screen_stage`), with
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
from kappaflow.cli.table import text_table

#: What ``kappaflow predict --help`` says.
PREDICT_DESCRIPTION = """\
Predict the lattice thermal conductivity κ_L (W/m/K) of crystal structure files (CIF,
POSCAR/CONTCAR, *.vasp) with the registered champion model, or the model --model-uri names.

For each file it prints κ, its calibrated 68 % and 95 % intervals, σ (how much the ensemble
members disagree, in decades of κ) and whether the crystal lies in the model's domain (known
elements, close to a training material). A file that cannot be read or scored prints
"ERROR <file>: <reason>" on stderr; the other files are still predicted and the exit status
is 1. Before any use, the model's weights are checked against the digests recorded when it was
registered; no code stored in the registry runs. A model that did not pass the baseline gate
(e.g. from the smoke run) is flagged: its numbers mean nothing.

examples:
  kappaflow predict PbTe.cif POSCAR_Si
  kappaflow predict --json --model-uri models:/kappaflow-kappa/3 my_structures/*.cif
"""

#: What ``kappaflow screen --help`` says.
SCREEN_DESCRIPTION = """\
Score every prepared structure of the screening pool (all structure datasets, one entry per
reduced formula + space group), plus the CIF/POSCAR files of --dir folders, with the champion
model, and write ranked tables to reports/screen/: ranked.csv (all, by κ descending),
top_high.csv and top_low.csv (the screen.top_n highest- and lowest-κ structures),
quarantine.csv (structures that could not be scored, with the reason), kappa_vs_sigma.png and
summary.json. The same as the pipeline's screen stage, with your folders added.

examples:
  kappaflow screen --dir my_cifs/
  kappaflow screen --dir my_cifs/ --only-dirs screen.top_n=20
"""


def add_parser(subparsers: Any) -> None:
    """Add the ``predict`` and ``screen`` subcommands to the ``kappaflow`` parser."""
    p = add_command(
        subparsers,
        "predict",
        "κ with intervals for CIF/POSCAR files (the champion model)",
        PREDICT_DESCRIPTION,
    )
    p.add_argument("files", nargs="+", help="CIF or POSCAR/CONTCAR/*.vasp files")
    add_model_uri(p)
    p.add_argument(
        "--json", action="store_true", help="print JSON records (full precision) instead of a table"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.set_defaults(func=predict_command)

    s = add_command(
        subparsers,
        "screen",
        "rank the screening pool (+ your structure folders) by predicted κ",
        SCREEN_DESCRIPTION,
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


def _options(cfg: Any) -> Any:
    """Return the ``validation`` limits of ``params.yaml``, or the defaults without one."""
    from kappaflow.data.validation import ValidationOptions

    return ValidationOptions.for_structures(None if cfg is None else cfg.get("validation"))


def _cif_text(path: Path, opts: Any) -> str:
    """Return the file's CIF text (POSCARs are converted with pymatgen ``CifWriter``).

    The file is stat-ed before it is opened, parsed within the limits of ``opts`` and checked
    (:func:`kappaflow.data.validation.check_crystal`) before the model sees it.

    Raises:
        CifError, StructureFileError: the file cannot be read as a structure, or fails a check
            (``CifError`` with the rejection's reason).
    """
    from kappaflow.data.validation import check_crystal
    from kappaflow.structure.cif import CifError, parse_structure_file, read_structure_text

    limits = opts.parse_limits()
    crystal = parse_structure_file(path, limits)
    rejection = check_crystal(crystal, opts)
    if rejection is not None:
        raise CifError(rejection.reason, rejection.detail)
    if path.name.lower().endswith((".cif", ".mcif")):
        return read_structure_text(path, limits)
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(crystal.to_structure()))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of successful prediction rows.

    ``formula`` is the conventional formula (``PbTe``), ``pymatgen`` pymatgen's reduced formula
    (``TePb``), the key the datasets and the leakage map use.
    """
    from kappaflow.structure.cif import escape_control

    head = (
        "file",
        "formula",
        "pymatgen",
        "κ (W/m/K)",
        "68 % interval",
        "95 % interval",
        "σ members",
        "in domain",
    )
    body = []
    for r in rows:
        dom = "yes" if r["in_domain"] else f"no ({r['ood_reason']})"
        sigma = r["sigma_log10"]
        i68 = f"[{_fmt(r['kappa_lo68'])}, {_fmt(r['kappa_hi68'])}]"
        i95 = f"[{_fmt(r['kappa_lo95'])}, {_fmt(r['kappa_hi95'])}]"
        body.append(
            (
                escape_control(str(r["id"])),
                r.get("formula_conventional") or r["formula"],
                r["formula"],
                _fmt(r["kappa"]),
                i68,
                i95,
                f"{sigma:.3f}",
                dom,
            )
        )
    return text_table([head, *body])


def predict_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow predict``; returns the exit code (1 if any file failed)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["KAPPAFLOW_DEVICE"] = args.device
    from kappaflow.cli.progress import Spinner
    from kappaflow.registry.champion import NoChampionError
    from kappaflow.registry.trust import UntrustedModelError
    from kappaflow.structure.cif import CifError, StructureFileError, escape_control

    cfg = _load_cfg()
    if args.model_uri:
        uri = args.model_uri
    elif cfg is not None:
        uri = f"models:/{cfg.registry.model_name}@champion"
    else:
        print("ERROR: no params.yaml here; pass --model-uri", file=sys.stderr)
        return 2
    try:  # only the verified ensemble data is downloaded; no code from the registry runs
        with Spinner(f"loading model {uri}"):
            import mlflow

            from kappaflow.registry.champion import load_champion, resolve_model
            from kappaflow.tracking.runs import quiet_mlflow, tracking_uri

            quiet_mlflow()
            mlflow.set_tracking_uri(tracking_uri(cfg))
            uri, info = resolve_model(cfg, uri)
            model = load_champion(uri, args.device, info)
    except (UntrustedModelError, NoChampionError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # MLflow raises many types (missing alias, store errors)
        print(
            f"ERROR: cannot load model {uri}: {exc} (no champion yet? `dvc repro register` "
            "registers one; `dvc repro` runs the whole pipeline)",
            file=sys.stderr,
        )
        return 2
    warning = ungated_warning(info)
    if warning:
        print(warning, file=sys.stderr)
    if info["pinned"] is None:
        print(
            f"note: {uri} (v{info['version']}) is not the version models/champion.json pins; "
            "it was checked against its own ensemble_sha256 tag only",
            file=sys.stderr,
        )

    try:
        opts = _options(cfg)
    except (KeyError, ValueError) as exc:
        print(f"ERROR: bad validation settings in params.yaml: {exc}", file=sys.stderr)
        return 2
    failed = False
    ids, texts = [], []
    for name in args.files:
        shown = escape_control(name)
        try:
            texts.append(_cif_text(Path(name), opts))
            ids.append(name)
        except (CifError, StructureFileError) as exc:
            detail = escape_control(exc.detail)
            print(f"ERROR {shown}: {exc.reason.value}: {detail}", file=sys.stderr)
            failed = True
        except Exception as exc:  # one hostile file never stops the others
            msg = escape_control(f"{type(exc).__name__}: {exc}")
            print(f"ERROR {shown}: check_failed: {msg}", file=sys.stderr)
            failed = True
    rows: list[dict[str, Any]] = []
    if texts:
        from kappaflow.registry.predictor import predict_cifs

        batch = int(os.environ.get("KAPPAFLOW_BATCH_SIZE", "64"))
        result = predict_cifs(model.ensemble, model.domain, texts, ids, batch)
        rows = [with_conventional(r) for r in result.to_dict(orient="records")]
    good = []
    for r in rows:
        if r["error"]:
            print(
                f"ERROR {escape_control(str(r['id']))}: {escape_control(str(r['error']))}",
                file=sys.stderr,
            )
            failed = True
        else:
            good.append(r)
    if args.json:
        print(json.dumps([_plain(r) for r in rows], indent=1))
    elif good:
        print(format_table(good))
        print(f"model: {uri}; {interval_note(model.ensemble.calibration)}")
    return 1 if failed else 0


def ungated_warning(info: dict[str, Any]) -> str | None:
    """Return a warning for a model version that did not pass the baseline gate, else None.

    Args:
        info: what :func:`kappaflow.registry.champion.resolve_model` returned; ``gated`` is the
            version's tag (``true``, ``false: <why>``, or None for a version without it).
    """
    gated = info.get("gated")
    if gated == "true":
        return None
    why = f"gated={gated}" if gated else "no gated tag"
    return (
        f"WARNING: {info.get('name')} v{info.get('version')} did not pass the baseline gate "
        f"({why}): it was not shown to beat the baselines. If it comes from the smoke run "
        "(+experiment=smoke: a few epochs on a sample), its numbers mean nothing."
    )


def interval_note(calibration: Any) -> str:
    """One line saying what the intervals are (and that σ is not one)."""
    sigma = "σ members = std over ensemble members of log10 κ (disagreement, not an interval)"
    if calibration is None:
        return f"uncalibrated model (registered before calibration): no interval; {sigma}"
    q68, q95 = calibration.half_width[0.68], calibration.half_width[0.95]
    return (
        f"intervals: conformal, calibrated on {calibration.n} out-of-fold predictions "
        f"(68 %: κ ×/÷ {10**q68:.2f}, 95 %: κ ×/÷ {10**q95:.2f}); {sigma}"
    )


def with_conventional(row: dict[str, Any]) -> dict[str, Any]:
    """Return the row with ``formula_conventional`` (``PbTe``) after pymatgen's ``formula``."""
    from kappaflow.data.validation import conventional_formula

    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = value
        if key == "formula":
            out["formula_conventional"] = conventional_formula(str(value or ""))
    return out


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
    warning = ungated_warning(summary["model"]) if summary.get("model") else None
    if warning:
        print(warning, file=sys.stderr)
    return 0
