"""``kappaflow verify FILE...``: tier 2 of the screen (phono3py κ_L) for the user's structures.

Each file is parsed and checked with the ``validation`` limits of ``params.yaml``, then κ_L at the
``verify.settings`` temperature (300 K) is computed by phono3py (LBTE or RTA) from the force
constants of the ``verify.potential`` universal potential
(:func:`kappaflow.stages.verify.verify_files`), cached per structure in ``verify.cache_dir``
unless ``--no-cache``. Same convention as ``kappaflow predict``: a file without a κ prints
``ERROR <file>: <reason>`` on stderr, the others are still computed, and the exit status is 1 if
any file has no κ (2: no ``params.yaml``). Flags (imaginary modes...) are shown, not errors.

Only light modules are imported at module level (``kappaflow --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from kappaflow.cli.args import add_command
from kappaflow.cli.table import text_table

#: What ``kappaflow verify --help`` says.
VERIFY_DESCRIPTION = """\
Compute the lattice thermal conductivity κ_L (W/m/K, 300 K) of crystal structure files (CIF,
POSCAR/CONTCAR, *.vasp) from phonons: phono3py (linearized Boltzmann equation, or the
relaxation-time approximation: verify.settings.method), with
second- and third-order force constants from a universal interatomic potential (SevenNet; the
weights ship with the package) after a relaxation that keeps the symmetry. This is the physics
check of the screen (tier 2); potential and settings come from the verify section of
params.yaml. When the phonons stage has validated the same potential and settings against
the D1 labels (phonons.kappa.datasets), a "corrected" κ is shown too: κ times one factor
that undoes the potential's systematic softening (the median label / κ ratio of that set).

It takes seconds to minutes per structure on a CPU core (a 2-atom rocksalt cell about 5-60 s,
a 4-atom wurtzite cell a few minutes); a progress bar shows the time left. Results are cached
per structure in data/verify/cache, so asking again is instant (--no-cache recomputes).

Flags: imaginary (the potential finds the structure dynamically unstable: κ means little),
relax_unconverged, symmetry_changed, nonfinite. A file that cannot be read, or whose supercells
are too large for the size limits, prints "ERROR <file>: <reason>" on stderr; the other files
are still computed and the exit status is 1.

examples:
  kappaflow verify NaCl.cif POSCAR_Si
  kappaflow verify --json --workers 1 my_structures/*.cif
"""


def add_parser(subparsers: Any) -> None:
    """Add the ``verify`` subcommand to the ``kappaflow`` parser."""
    p = add_command(
        subparsers,
        "verify",
        "κ from phonons (phono3py + a universal potential) for CIF/POSCAR files",
        VERIFY_DESCRIPTION,
    )
    p.add_argument("files", nargs="+", help="CIF or POSCAR/CONTCAR/*.vasp files")
    p.add_argument(
        "--json", action="store_true", help="print JSON records (full precision) instead of a table"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="recompute; do not read or write the cache"
    )
    p.add_argument("--workers", type=int, help="worker processes, one core each (default 2)")
    p.add_argument("--device", help="cpu | cuda | auto (default: the verify settings)")
    p.set_defaults(func=verify_command)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of computed rows: file, formula, κ, corrected κ, flags, seconds, cached.

    The corrected-κ column is shown only when some row has one.
    """
    from kappaflow.structure.cif import escape_control

    corrected = any(math.isfinite(r.get("kappa_phono3py_corrected", math.nan)) for r in rows)
    head = ("file", "formula", "κ phono3py (W/m/K)", *(("corrected",) if corrected else ()))
    head += ("flags", "seconds", "cached")

    def kappa(value: float) -> str:
        return f"{value:.3g}" if math.isfinite(value) else "nan"

    body = [
        (
            escape_control(str(r["id"])),
            str(r["formula"]),
            kappa(r["kappa_phono3py"]),
            *((kappa(r["kappa_phono3py_corrected"]),) if corrected else ()),
            r["flags"] or "-",
            f"{r['seconds']:.0f}",
            "yes" if r["cached"] else "no",
        )
        for r in rows
    ]
    return text_table([head, *body])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def verify_command(args: argparse.Namespace) -> int:
    """Run ``kappaflow verify``; returns the exit code (1 if any file has no κ)."""
    from kappaflow.config import load_params
    from kappaflow.phonons.conductivity import method_label
    from kappaflow.structure.cif import escape_control

    try:
        cfg = load_params()
    except FileNotFoundError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    from kappaflow.stages.verify import verify_files

    table = verify_files(
        cfg,
        args.files,
        use_cache=not args.no_cache,
        workers=args.workers,
        device=args.device,
        progress=not args.json,
    )
    rows = table.to_dict(orient="records")
    failed = False
    for r in rows:
        if r["reason"]:
            print(
                f"ERROR {escape_control(str(r['id']))}: {escape_control(str(r['reason']))}",
                file=sys.stderr,
            )
            failed = True
    if args.json:
        print(json.dumps([_plain(r) for r in rows], indent=1))
    else:
        good = [r for r in rows if not r["reason"]]
        if good:
            print(format_table(good))
            print(
                f"potential: {cfg.verify.potential}; phono3py "
                f"{method_label(cfg.verify.settings.get('method'))} at "
                f"{float(cfg.verify.settings.temperature):g} K; seconds: one core per structure"
            )
    return 1 if failed else 0
