"""Hostile structure files: outcome (reason), peak RSS and wall time of each, one process each.

Generates every probe of ``tests/data/hostile_inputs.py`` (a 1e30 / 1e8 Å cell, a 47 MB CIF of
830,584 atoms, a slow Fm-3m CIF with 300 general positions, POSCAR count mismatches, two data
blocks, a nearly coplanar cell, a folder, a FIFO, a symlink loop, 2D / 1D structures with vacuum,
a newline in a file name...) in a temporary folder and scores each single file in a fresh
subprocess:

* with ``--model-uri URI`` (e.g. ``models:/kappaflow-kappa@champion``): ``kappaflow predict
  --model-uri URI FILE``, the real command;
* otherwise (no registered model needed): the validation/featurization path of ``predict``,
  ``parse_structure_file`` within the limits + ``check_crystal`` + ``crystal_to_graph`` (8 Å,
  12 neighbours) with the ``validation`` limits of ``params.yaml``.

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` (the parser's own killable grandchild is
not included: it is bounded by the parse budget). Targets: < 2 GiB and < 30 s per file.

Usage::

    python benchmarks/hostile_inputs.py [--model-uri URI] [--no-large]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))

RSS_TARGET_MIB = 2048.0
WALL_TARGET_S = 30.0
TIMEOUT_S = 120.0


def probe_one(path: str) -> int:
    """Child mode: the predict path without a model; prints ``OUTCOME <reason|ok>``."""
    from omegaconf import OmegaConf

    from kappaflow.config import load_params
    from kappaflow.data.validation import ValidationOptions, check_crystal
    from kappaflow.graphs.build import crystal_to_graph
    from kappaflow.structure.cif import CifError, StructureFileError, parse_structure_file

    cfg = load_params()
    raw = OmegaConf.to_container(cfg.validation, resolve=True)
    assert isinstance(raw, dict)
    raw.pop("n_jobs", None)
    opts = ValidationOptions.from_mapping(raw)
    try:
        crystal = parse_structure_file(path, opts.parse_limits())
        rejection = check_crystal(crystal, opts)
        if rejection is not None:
            print(f"OUTCOME {rejection.reason.value}")
            return 1
        crystal_to_graph(crystal, float(cfg.graphs.cutoff), int(cfg.graphs.max_neighbors))
    except (CifError, StructureFileError) as exc:
        print(f"OUTCOME {exc.reason.value}")
        return 1
    print("OUTCOME ok")
    return 0


def run_child(cmd: list[str]) -> tuple[str, float, float]:
    """Run ``cmd``; return (combined output, peak RSS MiB, wall s)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = t0 + TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
    return text, usage.ru_maxrss / 1024.0, wall


def outcome_of(text: str, model: bool) -> str:
    """Reason code from the child's output."""
    for line in text.splitlines():
        if not model and line.startswith("OUTCOME "):
            return line.split()[1]
        if model and line.startswith("ERROR ") and ": " in line:
            return line.split(": ", 2)[1]
    if model and "κ (W/m/K)" in text:
        return "ok (scored)"
    tail = text.strip().splitlines()[-1:] or ["no output"]
    return f"CRASH: {tail[0][:60]}"


def main() -> int:
    """Write the probes, run each in a subprocess, print the table; 1 if a target is missed."""
    from hostile_inputs import write_corpus
    from kappaflow.structure.cif import escape_control

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", default=None, help="score with `kappaflow predict`")
    ap.add_argument("--no-large", action="store_true", help="skip the 47 MB CIF")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe_one(args.probe)
    mode = (
        f"kappaflow predict --model-uri {args.model_uri}"
        if args.model_uri
        else "validation/featurization path (parse + limits + checks + graph), no model"
    )
    print(f"mode: {mode}")
    rows, missed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp), include_large=not args.no_large)
        for probe, path in corpus:
            if args.model_uri:
                cmd = ["kappaflow", "predict", "--model-uri", args.model_uri, str(path)]
            else:
                cmd = [sys.executable, __file__, "--probe", str(path)]
            text, rss, wall = run_child(cmd)
            got = outcome_of(text, bool(args.model_uri))
            ok = got == probe.reason and rss < RSS_TARGET_MIB and wall < WALL_TARGET_S
            missed += not ok
            rows.append((escape_control(probe.name), got, f"{rss:.0f}", f"{wall:.2f}", ok))
    head = ("probe", "outcome (reason)", "peak RSS MiB", "wall s", "as expected")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4])
    print(f"targets: peak RSS < {RSS_TARGET_MIB:.0f} MiB, wall < {WALL_TARGET_S:.0f} s per file")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
