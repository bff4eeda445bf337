"""DVC stage ``verify``: tier 2 of the screening funnel, phono3py κ_L for the screen's top hits.

Reads ``verify`` (candidates, potential, κ settings, workers, paths, disagreement factor), the
``validation`` limits (user structure files are parsed and checked again), ``phonons.kappa`` and
``phonons.potential`` (which κ sets the phonons stage computed, and how: the validation section)
and the dataset cards (their labels).

1. Candidates: walking down ``<verify.screen_dir>/top_high.csv`` and ``top_low.csv`` in rank
   order until ``verify.n_high`` / ``verify.n_low`` crystals fit the CPU budget
   (:func:`pick_candidates`: one polymorph per formula, ``verify.max_primitive_atoms``,
   ``verify.max_force_atoms``; the ones passed over are kept with the reason)
   (ML κ, σ, 95 % interval, domain flag). Each structure
   is read back from where the screen read it: the prepared table named by ``source`` (pool
   rows, looked up by ``id``) or the user's file (``dataset == "user"``, parsed and checked with
   the ``validation`` limits).
2. κ_L at 300 K from phono3py (``method``: LBTE or RTA) with the universal potential's second-
   and third-order force constants after a symmetry-kept relaxation
   (:func:`~kappaflow.phonons.conductivity.phono3py_kappa`, through
   :func:`~kappaflow.phonons.batch.compute_descriptors`: per-structure content-keyed cache
   ``verify.cache_dir``, worker processes, progress bar with ETA). Records of
   ``verify.reuse_caches`` (the phonons stage's cache) with the same content key are reused. A
   candidate whose structure cannot be read, whose primitive cell has more than
   ``verify.max_primitive_atoms`` atoms, or that phono3py refuses or fails on keeps its row with
   the reason; flagged results (imaginary modes, unconverged relaxation, broken symmetry,
   non-finite κ) keep their κ and the flag. The same structure in both lists is computed once.
3. Ratio κ_ML / κ_phono3py; ``disagree`` when it is above ``verify.disagreement_factor`` or
   below its inverse.
4. Validation of the physics route: the phonons stage's κ of every ``phonons.kappa.datasets`` set
   (``data/phonons/tables/<dataset>_kappa.parquet``) against the set's labels
   (:func:`~kappaflow.phonons.validation.kappa_validation`).

Outputs: ``<verify.out_dir>/verified.csv`` (:data:`VERIFIED_COLUMNS`;
``kappa_phono3py_corrected``: κ × 10^offset, the softening correction fitted on the phonons
stage's κ set, NaN without one: :func:`validation_section`), ``parity.png``;
``reports/verify.md``; ``metrics/headline/verify.json``; an MLflow run with all of them.

Checked: every candidate has exactly one row, with a κ (possibly flagged) or a reason:
candidates in == computed + not computed (:func:`check_accounting`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.data.validation import ValidationOptions, check_crystal
from kappaflow.evaluation.report import write_report
from kappaflow.io_utils import headline_metrics
from kappaflow.layout import kappa_table, project_root
from kappaflow.phonons.batch import cache_key, compute_descriptors
from kappaflow.phonons.conductivity import KAPPA_FLAGS, SYMPREC, KappaSettings, method_label
from kappaflow.phonons.potential import potential_card
from kappaflow.phonons.validation import (
    kappa_table_path,
    kappa_validation,
    ml_physics_agreement,
    parity_plot,
    validation_markdown,
)
from kappaflow.stages.common import finish_study
from kappaflow.structure.cif import CifError, StructureFileError, escape_control
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias, is_count
from kappaflow.tracking.runs import log_params

log = logging.getLogger(__name__)

#: ``dataset`` of user structure files in the screen's tables (``kappaflow.screen.pool``).
USER_DATASET = "user"
#: The top-list files of the screen, per side.
TOP_FILES: dict[str, str] = {"high": "top_high.csv", "low": "top_low.csv"}
#: Columns of the screen's top lists this stage reads.
SCREEN_COLUMNS: tuple[str, ...] = (
    "id",
    "dataset",
    "formula",
    "spacegroup",
    "kappa",
    "log10_kappa",
    "sigma_log10",
    "kappa_lo95",
    "kappa_hi95",
    "in_domain",
    "source",
)
#: Columns of :func:`physics_kappa`'s table besides ``id``.
PHYSICS_COLUMNS: tuple[str, ...] = (
    "kappa_phono3py",
    "flags",
    "reason",
    "n_primitive",
    "seconds",
    "cached",
)
#: Columns of ``verified.csv``: κ in W/m/K, σ in decades of κ, ``ratio`` = κ_ML / κ_phono3py,
#: ``seconds`` the phono3py wall time (one core; for a cached row, when it was computed).
VERIFIED_COLUMNS: tuple[str, ...] = (
    "side",
    "rank",
    "id",
    "dataset",
    "formula",
    "spacegroup",
    "in_domain",
    "kappa_ml",
    "sigma_log10",
    "kappa_ml_lo95",
    "kappa_ml_hi95",
    "kappa_phono3py",
    "kappa_phono3py_corrected",
    "ratio",
    "disagree",
    *PHYSICS_COLUMNS[1:],
)
#: The stage's report, under the project root.
REPORT = Path("reports") / "verify.md"


@dataclass(frozen=True)
class VerifyConfig:
    """How tier 2 computes κ (the ``verify`` config node, paths resolved).

    Attributes:
        potential: key of :data:`kappaflow.phonons.potential.POTENTIALS`.
        kappa: phono3py settings (:class:`~kappaflow.phonons.conductivity.KappaSettings`).
        cache_dir: per-structure result cache (absolute).
        reuse_caches: read-only caches whose matching records are copied into ``cache_dir``.
        max_primitive_atoms: a candidate with more atoms in its primitive cell is not computed
            (CPU budget); None: no limit.
        max_force_atoms: a candidate whose displaced supercells hold more atoms in all
            (:func:`~kappaflow.phonons.plan.force_plan`, the cost of its force calls) is not
            computed (CPU budget); None: no limit.
        one_per_formula: verify only the best-ranked polymorph of each reduced formula.
        workers: worker processes (one core each).
        device: ``cpu`` / ``cuda`` / ``auto`` for the potential.
        disagreement_factor: ML and phono3py disagree beyond this ratio (either way).
    """

    potential: str
    kappa: KappaSettings
    cache_dir: Path
    reuse_caches: tuple[Path, ...] = ()
    max_primitive_atoms: int | None = None
    max_force_atoms: int | None = None
    one_per_formula: bool = True
    workers: int = 2
    device: str = "cpu"
    disagreement_factor: float = 3.0

    @classmethod
    def from_cfg(cls, cfg: DictConfig, root: Path) -> VerifyConfig:
        """Build from the full config's ``verify`` node; relative paths are under ``root``."""
        node = cfg.verify
        settings = OmegaConf.to_container(node.settings, resolve=True)
        assert isinstance(settings, dict)
        limit = node.get("max_primitive_atoms")
        return cls(
            potential=str(node.potential),
            kappa=KappaSettings(**{str(k): v for k, v in settings.items()}),
            cache_dir=root / str(node.cache_dir),
            reuse_caches=tuple(root / str(p) for p in node.get("reuse_caches") or ()),
            max_primitive_atoms=None if limit is None else int(limit),
            max_force_atoms=None
            if node.get("max_force_atoms") is None
            else int(node.max_force_atoms),
            one_per_formula=bool(node.get("one_per_formula", True)),
            workers=int(node.workers),
            device=str(node.device),
            disagreement_factor=float(node.disagreement_factor),
        )


def read_structure(path: str | Path, opts: ValidationOptions) -> tuple[CrystalArrays | None, str]:
    """Parse and check one structure file (CIF, POSCAR...): ``(crystal, "")`` or ``(None, reason)``.

    A file that cannot be read or fails a check (:func:`kappaflow.data.validation.check_crystal`)
    gives ``<reason code>: <detail>``; nothing raises.
    """
    from kappaflow.structure.cif import parse_structure_file

    try:
        crystal = parse_structure_file(path, opts.parse_limits())
        rejection = check_crystal(crystal, opts)
    except (CifError, StructureFileError) as exc:
        return None, f"{exc.reason.value}: {escape_control(exc.detail)}"
    except Exception as exc:  # noqa: BLE001 - one hostile file never stops the others
        return None, escape_control(f"check_failed: {type(exc).__name__}: {exc}")
    if rejection is not None:
        return None, f"{rejection.reason.value}: {rejection.detail}"
    return crystal, ""


def primitive_atoms(crystal: CrystalArrays) -> int:
    """Count the atoms of the primitive cell (spglib at phono3py's symmetry tolerance).

    The cell's own count when the symmetry search fails.
    """
    import spglib

    cell = (crystal.lattice, crystal.frac_coords, crystal.numbers)
    try:
        prim = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=SYMPREC)
    except Exception:  # noqa: BLE001 - spglib raises its own error types on odd cells
        prim = None
    return len(prim[2]) if prim is not None else len(crystal.numbers)


def _reuse_records(keys: Sequence[str], caches: Sequence[Path], cache_dir: Path) -> int:
    """Copy records of ``keys`` found in ``caches`` (and not in ``cache_dir``); return how many."""
    copied = 0
    cache_dir.mkdir(parents=True, exist_ok=True)
    for key in dict.fromkeys(keys):
        target = cache_dir / f"{key}.json"
        if target.is_file():
            continue
        for cache in caches:
            found = cache / f"{key}.json"
            if found.is_file():
                shutil.copyfile(found, target)
                copied += 1
                break
    return copied


def physics_kappa(
    ids: Sequence[str],
    crystals: Sequence[CrystalArrays | None],
    reasons: Sequence[str],
    vc: VerifyConfig,
    *,
    progress: bool = True,
    desc: str = "verify κ",
) -> pd.DataFrame:
    """phono3py κ_L (W/m/K, 300 K by default) of each structure, cached; one row per input.

    Args:
        ids: one id per structure (kept as given; may repeat).
        crystals: the structures; None where ``reasons`` says why there is none.
        reasons: a non-empty reason marks a structure that is not computed.
        vc: potential, settings, cache, workers.
        progress: progress bar with ETA.
        desc: the bar's label.

    Returns:
        ``id`` and :data:`PHYSICS_COLUMNS`, in input order: ``kappa_phono3py`` (NaN when not
        computed or non-finite), ``flags`` (comma-separated :data:`KAPPA_FLAGS`), ``reason``
        (empty when computed), ``n_primitive``, ``seconds`` (phono3py wall time, one core),
        ``cached``. Identical structures are computed once.
    """
    if not len(ids) == len(crystals) == len(reasons):
        raise ValueError(f"{len(ids)} ids, {len(crystals)} crystals, {len(reasons)} reasons")
    out = pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "kappa_phono3py": np.nan,
            "flags": "",
            "reason": [str(r) for r in reasons],
            "n_primitive": 0,
            "seconds": 0.0,
            "cached": False,
        }
    )
    todo: dict[int, CrystalArrays] = {}  # row -> structure to compute
    for i, crystal in enumerate(crystals):
        if out.at[i, "reason"]:
            continue
        if crystal is None:
            out.at[i, "reason"] = "no structure"
            continue
        todo[i] = crystal
    if not todo:
        return out
    keys = {i: cache_key(c, vc.kappa, vc.potential, "kappa") for i, c in todo.items()}
    reused = _reuse_records(list(keys.values()), vc.reuse_caches, vc.cache_dir)
    if reused:
        log.info("%s: %d records reused from %s", desc, reused, [str(c) for c in vc.reuse_caches])
    first: dict[str, int] = {}  # key -> first row with it (a structure in both lists: once)
    for i, key in keys.items():
        first.setdefault(key, i)
    frame = compute_descriptors(
        [str(out.at[i, "id"]) for i in first.values()],
        [todo[i] for i in first.values()],
        vc.kappa,
        vc.potential,
        vc.cache_dir,
        kind="kappa",
        workers=vc.workers,
        device=vc.device,
        progress=progress,
        desc=desc,
    )
    if len(frame) != len(first):
        raise RuntimeError(f"{desc}: {len(frame)} results for {len(first)} structures")
    by_key = dict(zip(first, frame.to_dict(orient="records"), strict=True))
    for i, key in keys.items():
        record = by_key[key]
        out.at[i, "kappa_phono3py"] = float(record["ph3_kappa_w_mk"])
        for col in ("flags", "reason", "n_primitive", "seconds", "cached"):
            out.at[i, col] = record[col]
    return out


def pick_candidates(
    cfg: DictConfig, top: pd.DataFrame, n: int, vc: VerifyConfig, root: Path
) -> tuple[pd.DataFrame, list[CrystalArrays | None], list[str]]:
    """Walk down a top list until ``n`` candidates fit the CPU budget.

    Rows are read in rank order. A row is passed over, and kept with its reason (accounted for,
    not computed), when its structure cannot be read, a better-ranked polymorph of its formula
    was picked (``vc.one_per_formula``), its primitive cell has more than
    ``vc.max_primitive_atoms`` atoms, or its displaced supercells exceed the settings' atom
    guards or hold more than ``vc.max_force_atoms`` atoms (:func:`~kappaflow.phonons.plan.
    force_plan`); the walk goes on, so the ``n`` best-ranked computable crystals are verified.
    Rows after the ``n``-th computable one are not candidates.

    Returns:
        ``(candidates, crystals, reasons)``, one entry per candidate row.
    """
    from kappaflow.phonons.plan import budget_reason

    crystals, reasons = candidate_crystals(cfg, top, root)
    keep, fits, formulas = [], 0, {}
    for i, crystal in enumerate(crystals):
        if fits >= n:
            break
        keep.append(i)
        if reasons[i] or crystal is None:
            continue
        formula = str(top["formula"].iloc[i])
        if vc.one_per_formula and formula in formulas:
            reasons[i] = (
                f"polymorph of {formula} ranked higher ({formulas[formula]}) is verified "
                "(verify.one_per_formula)"
            )
            continue
        n_prim = primitive_atoms(crystal)
        limit = vc.max_primitive_atoms
        if limit is not None and n_prim > limit:
            reasons[i] = (
                f"{n_prim} atoms in the primitive cell > verify.max_primitive_atoms={limit} "
                "(CPU budget)"
            )
            continue
        reasons[i] = budget_reason(crystal, vc.kappa, vc.max_force_atoms, "verify.max_force_atoms")
        if reasons[i]:
            continue
        formulas[formula] = str(top["id"].iloc[i])
        fits += 1
    return (
        top.iloc[keep].reset_index(drop=True),
        [crystals[i] for i in keep],
        [reasons[i] for i in keep],
    )


def read_top(path: Path, n: int | None, side: str) -> pd.DataFrame:
    """Read the first ``n`` rows (None: all) of a screen top list as candidates of ``side``.

    Returns:
        ``side``, ``rank`` (1-based position in the list), ``id``, ``dataset``, ``formula``,
        ``spacegroup``, ``in_domain``, ``kappa_ml``, ``sigma_log10``, ``kappa_ml_lo95``,
        ``kappa_ml_hi95`` (W/m/K), ``source``.

    Raises:
        FileNotFoundError: the list is missing (the screen has not run).
        ValueError: a column of :data:`SCREEN_COLUMNS` is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run the screen first (`dvc repro screen`)")
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SCREEN_COLUMNS if c not in text.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    top = (text if n is None else text.head(max(0, int(n)))).reset_index(drop=True)

    def number(col: str) -> np.ndarray:
        return pd.to_numeric(top[col], errors="coerce").to_numpy(np.float64)

    return pd.DataFrame(
        {
            "side": [side] * len(top),
            "rank": np.arange(1, len(top) + 1),
            "id": top["id"],
            "dataset": top["dataset"],
            "formula": top["formula"],
            "spacegroup": pd.to_numeric(top["spacegroup"], errors="coerce").fillna(-1).astype(int),
            "in_domain": top["in_domain"].str.strip().str.lower().isin(["true", "1"]),
            "kappa_ml": number("kappa"),
            "sigma_log10": number("sigma_log10"),
            "kappa_ml_lo95": number("kappa_lo95"),
            "kappa_ml_hi95": number("kappa_hi95"),
            "source": top["source"],
        }
    )


def _under(root: Path, source: str) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else root / path


def candidate_crystals(
    cfg: DictConfig, candidates: pd.DataFrame, root: Path
) -> tuple[list[CrystalArrays | None], list[str]]:
    """Read each candidate's structure back: ``(crystals, reasons)``, one per row.

    Pool rows come from the prepared table ``source`` (relative to ``root``), looked up by
    ``id``; user rows (``dataset == "user"``) from their file, parsed and checked with the
    ``validation`` limits. A structure that cannot be found or read gets None and the reason.
    """
    n = len(candidates)
    crystals: list[CrystalArrays | None] = [None] * n
    reasons = [""] * n
    frame = candidates.reset_index(drop=True)
    user = (frame["dataset"] == USER_DATASET).to_numpy()
    for source, group in frame.loc[~user].groupby("source", sort=False):
        path = _under(root, str(source))
        if not path.is_file():
            for i in group.index:
                reasons[i] = f"prepared table {source} not found"
            continue
        ids = sorted(set(group["id"].astype(str)))
        table = pd.read_parquet(
            path, columns=["id", "lattice", "numbers", "frac_coords"], filters=[("id", "in", ids)]
        )
        table = table.assign(id=table["id"].astype(str)).drop_duplicates("id").set_index("id")
        for i, mid in zip(group.index, group["id"].astype(str), strict=True):
            if mid not in table.index:
                reasons[i] = f"id {mid} not in {source}"
                continue
            row = table.loc[mid]
            crystals[i] = CrystalArrays.from_row(row["lattice"], row["numbers"], row["frac_coords"])
    if user.any():
        opts = ValidationOptions.for_structures(cfg.get("validation"))
        for i in np.flatnonzero(user):
            crystals[i], reasons[i] = read_structure(_under(root, str(frame.at[i, "source"])), opts)
    return crystals, reasons


def assemble(
    candidates: pd.DataFrame, physics: pd.DataFrame, factor: float, offset: float = float("nan")
) -> pd.DataFrame:
    """Join candidates and :func:`physics_kappa` rows (same order), add ratio and disagree.

    ``kappa_phono3py_corrected`` = ``kappa_phono3py`` × 10^``offset`` (the softening correction
    of :func:`validation_section`; NaN without one). ``ratio`` and ``disagree`` compare the ML κ
    with the uncorrected phono3py κ.
    """
    if len(candidates) != len(physics):
        raise RuntimeError(f"{len(physics)} phono3py rows for {len(candidates)} candidates")
    table = pd.concat(
        [
            candidates.reset_index(drop=True).drop(columns=["source"]),
            physics.reset_index(drop=True)[list(PHYSICS_COLUMNS)],
        ],
        axis=1,
    )
    ratio, disagree = ml_physics_agreement(table["kappa_ml"], table["kappa_phono3py"], factor)
    table["ratio"] = ratio
    table["disagree"] = disagree
    table["kappa_phono3py_corrected"] = table["kappa_phono3py"].to_numpy(float) * 10**offset
    return table[list(VERIFIED_COLUMNS)]


def check_accounting(verified: pd.DataFrame, n_in: int) -> dict[str, int]:
    """Check candidates in == computed + not computed, every row once; return the counts.

    A computed row (empty ``reason``) must carry a κ, or the ``nonfinite`` flag that explains
    its absence; a not-computed row must say why.

    Raises:
        RuntimeError: a candidate was lost, duplicated or left without κ and without reason.
    """
    computed = (verified["reason"] == "").to_numpy()
    has_kappa = np.isfinite(verified["kappa_phono3py"].to_numpy(float))
    nonfinite = verified["flags"].str.contains("nonfinite").to_numpy()
    unexplained = computed & ~has_kappa & ~nonfinite
    keys = verified["side"].astype(str) + "/" + verified["rank"].astype(str)
    counts = {
        "n_candidates": n_in,
        "n_computed": int(computed.sum()),
        "n_not_computed": int((~computed).sum()),
    }
    if (
        len(verified) != n_in
        or counts["n_computed"] + counts["n_not_computed"] != n_in
        or keys.duplicated().any()
        or unexplained.any()
    ):
        lost = verified.loc[unexplained, "id"].tolist()
        raise RuntimeError(
            f"verify: {n_in} candidates in, {len(verified)} rows out "
            f"({counts['n_computed']} computed + {counts['n_not_computed']} not computed); "
            f"without κ and without reason: {lost}"
        )
    return counts


def _cell(value: Any) -> str:
    """One markdown table cell (pipes escaped, one line)."""
    return escape_control(str(value)).replace("|", "\\|").replace("\n", " ")


def _g(x: float, fmt: str = ".3g") -> str:
    return format(float(x), fmt) if np.isfinite(float(x)) else "–"


def candidate_section(verified: pd.DataFrame) -> str:
    """Markdown table of the candidates (ML κ [95 %], σ, phono3py κ, ratio, flags, time)."""
    lines = [
        "| side | # | id | formula | space group | κ ML [95 %] | σ | κ phono3py | corrected | "
        "ML / phono3py | > factor | flags / reason | s | cached |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in verified.itertuples(index=False):
        status = r.reason or r.flags or "–"
        lines.append(
            f"| {r.side} | {r.rank} | {_cell(r.id)} | {_cell(r.formula)} | {r.spacegroup} | "
            f"{_g(r.kappa_ml)} [{_g(r.kappa_ml_lo95)}, {_g(r.kappa_ml_hi95)}] | "
            f"{_g(r.sigma_log10, '.3f')} | {_g(r.kappa_phono3py)} | "
            f"{_g(r.kappa_phono3py_corrected)} | "
            f"{_g(r.ratio, '.2f')} | "
            f"{'**yes**' if r.disagree else ''} | {_cell(status)} | {_g(r.seconds, '.0f')} | "
            f"{'yes' if r.cached else ''} |"
        )
    return "\n".join(lines)


def disagreement_section(verified: pd.DataFrame, factor: float) -> str:
    """List the candidates where ML and phono3py disagree by more than ``factor``, either way."""
    bad = verified[verified["disagree"]]
    head = f"## ML and physics disagree by more than {factor:g}×"
    if not len(bad):
        n_both = int(np.isfinite(verified["ratio"].to_numpy(float)).sum())
        return f"{head}\n\nNone of the {n_both} candidates with both κ."
    items = [
        f"* {_cell(r.formula)} ({_cell(r.id)}, top {r.side} #{r.rank}): κ ML {_g(r.kappa_ml)} "
        f"vs phono3py {_g(r.kappa_phono3py)} W/m/K (ratio {_g(r.ratio, '.2f')})"
        + (f"; flags: {r.flags}" if r.flags else "")
        for r in bad.itertuples(index=False)
    ]
    return "\n".join([head, "", *items])


def timing_section(verified: pd.DataFrame, wall_s: float, workers: int) -> str:
    """Wall time per compound (phono3py, one core each) and of the stage."""
    computed = verified[verified["reason"] == ""].drop_duplicates(["dataset", "id"])
    secs = computed["seconds"].to_numpy(float)
    fresh = computed.loc[~computed["cached"].astype(bool), "seconds"].to_numpy(float)
    lines = ["## Wall time"]
    if len(secs):
        lines.append(
            f"phono3py per compound (one core; {len(secs)} structures): mean {secs.mean():.1f} s, "
            f"median {np.median(secs):.1f} s, max {secs.max():.1f} s; "
            f"{len(secs) - len(fresh)} served from the cache, {len(fresh)} computed in this run "
            f"({fresh.sum():.0f} core-seconds on {workers} worker(s))."
        )
    else:
        lines.append("No candidate was computed.")
    lines.append(f"Stage wall time: {wall_s:.1f} s.")
    return "\n\n".join(lines)


def validation_section(cfg: DictConfig, root: Path) -> tuple[str, pd.DataFrame, float]:
    """Validate the physics route against the labels of ``phonons.kappa.datasets``.

    Reads the phonons stage's κ tables (:func:`~kappaflow.phonons.validation.kappa_table_path`).

    Returns:
        The report section (markdown), the table of
        :func:`~kappaflow.phonons.validation.kappa_validation` (empty without κ sets) and the
        softening correction for the candidates (``offset_log10`` of the first validated set,
        :func:`~kappaflow.phonons.validation.loo_offset`), NaN when there is none or when the
        phonons stage used another potential or other settings than verify (an offset of
        another setup does not apply).

    Raises:
        FileNotFoundError: a κ table is missing (the phonons stage has not run).
    """
    pk = cfg.phonons.kappa
    datasets = [str(d) for d in pk.datasets]
    head = "## Validation of the physics route against the labels"
    if not datasets:
        return (
            f"{head}\n\nphonons.kappa.datasets is empty (e.g. the smoke experiment): the phonons "
            "stage computed no κ set, so this run has no validation of phono3py κ against labels "
            "and the candidates' κ is not corrected for the potential's softening.",
            pd.DataFrame(),
            float("nan"),
        )
    kappas = {}
    for dataset in datasets:
        path = kappa_table_path(root, dataset)
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: run the phonons stage (`dvc repro phonons`)")
        kappas[dataset] = pd.read_parquet(path)
    table = kappa_validation(kappas, {d: kappa_table(cfg, d)[0] for d in datasets})
    same = OmegaConf.to_container(pk.settings, resolve=True) == OmegaConf.to_container(
        cfg.verify.settings, resolve=True
    ) and str(cfg.phonons.potential) == str(cfg.verify.potential)
    note = (
        "Same potential and settings as the candidates above."
        if same
        else f"Note: the phonons stage used potential {cfg.phonons.potential} and its own "
        "phonons.kappa.settings, which differ from verify's: the table validates that setup."
    )
    text = (
        f"{head}\n\nphono3py κ ({method_label(pk.settings.get('method'))}, 300 K) of the "
        f"phonons stage for every compound of "
        f"{', '.join(datasets)} (D1: ab initio phono3py κ, the reference this route approximates) "
        "against the labels, no fit involved; compounds the phonons stage left out "
        "(phonons.kappa.families, supercell guards) count as not computed. "
        f"{note}\n\n{validation_markdown(table)}"
    )
    offsets = table["offset_log10"].to_numpy(float)
    offsets = offsets[np.isfinite(offsets)]
    offset = float(offsets[0]) if same and len(offsets) else float("nan")
    if np.isfinite(offset):
        text += (
            f"\n\nThe candidates' corrected κ (`kappa_phono3py_corrected`) is their phono3py κ × "
            f"10^{offset:+.3f} (×{10**offset:.2f}), the offset of {table['dataset'].iloc[0]}."
        )
    return text, table, offset


def _headline(
    counts: dict[str, int],
    verified: pd.DataFrame,
    validation: pd.DataFrame,
    wall_s: float,
    aliases: Any,
) -> dict[str, Any]:
    computed = verified[verified["reason"] == ""]
    structures = computed.drop_duplicates(["dataset", "id"])  # one per structure, both lists
    ratio = verified["ratio"].to_numpy(float)
    ratio = ratio[np.isfinite(ratio)]
    metrics: dict[str, Any] = {
        **counts,
        "n_flagged": int((computed["flags"] != "").sum()),
        "n_disagree": int(verified["disagree"].sum()),
        "median_abs_log10_ratio": float(np.median(np.abs(np.log10(ratio)))) if len(ratio) else None,
        "seconds_per_compound": float(structures["seconds"].mean()) if len(structures) else None,
        "wall_s": wall_s,
    }
    for r in validation.itertuples(index=False):
        metrics[f"validation_{dataset_alias(str(r.dataset), aliases)}"] = {
            "log10_mae": r.log10_mae,
            "within_2x": r.within_2x,
            "spearman": r.spearman,
            "n_computed": r.n_computed,
        }
    return headline_metrics(metrics)


def verify_stage(cfg: DictConfig) -> dict[str, Any]:
    """Compute phono3py κ for the screen's top candidates; write table, plot, report, metrics.

    Returns:
        The headline metrics (also ``metrics/headline/verify.json``).

    Raises:
        FileNotFoundError: a top list or a κ table of the phonons stage is missing.
        RuntimeError: :func:`check_accounting` fails.
    """
    t_start = time.perf_counter()
    root = project_root()
    node = cfg.verify
    vc = VerifyConfig.from_cfg(cfg, root)
    card = potential_card(vc.potential)
    screen_dir = root / str(node.screen_dir)
    out = root / str(node.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vc.cache_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when nothing is computed
    picks = [
        pick_candidates(cfg, read_top(screen_dir / TOP_FILES[side], None, side), n, vc, root)
        for side, n in (("high", int(node.n_high)), ("low", int(node.n_low)))
    ]
    candidates = pd.concat([p[0] for p in picks], ignore_index=True)
    crystals = [c for p in picks for c in p[1]]
    reasons = [r for p in picks for r in p[2]]
    n_in = len(candidates)
    with start_stage_run(
        cfg,
        "verify",
        run_name="verify",
        dvc_stage="verify",
        purpose="registry",
        params=["verify"],
    ) as run:
        physics = physics_kappa(candidates["id"].tolist(), crystals, reasons, vc)
        validation_text, validation, offset = validation_section(cfg, root)
        verified = assemble(candidates, physics, vc.disagreement_factor, offset)
        counts = check_accounting(verified, n_in)
        csv = out / "verified.csv"
        verified.to_csv(csv, index=False)
        png = out / "parity.png"
        title = (
            ""
            if n_in
            else "no candidates: the screen's top lists are empty (no champion? see "
            "reports/screen/summary.json)"
        )
        parity_plot(verified, png, vc.disagreement_factor, title=title)
        wall_s = time.perf_counter() - t_start
        settings = OmegaConf.to_container(node.settings, resolve=True)
        flag_counts = {f: int(verified["flags"].str.contains(f).sum()) for f in KAPPA_FLAGS}
        reasons_seen = verified.loc[verified["reason"] != "", "reason"].value_counts()
        if n_in:
            summary = (
                f"{n_in} candidates (top {int(node.n_high)} high-κ and top {int(node.n_low)} "
                f"low-κ of {node.screen_dir}): {counts['n_computed']} computed "
                f"({', '.join(f'{n} {f}' for f, n in flag_counts.items() if n) or 'none flagged'}"
                f"), {counts['n_not_computed']} not computed."
            )
            if len(reasons_seen):
                summary += "\n\nNot computed:\n" + "\n".join(
                    f"* {n}× {_cell(r)}" for r, n in reasons_seen.items()
                )
            body = [summary, candidate_section(verified)]
            body.append(disagreement_section(verified, vc.disagreement_factor))
        else:
            body = [
                f"No candidates: the screen's top lists ({node.screen_dir}/top_high.csv, "
                "top_low.csv) are empty, e.g. because no model passed the registry gate (no "
                "champion; see reports/screen/summary.json). Nothing to verify."
            ]
        report = write_report(
            root / REPORT,
            f"κ_L at 300 K from phono3py ({method_label(vc.kappa.method)}) with force "
            f"constants of {card.name} "
            f"({card.package} {card.model}; trained on {card.training_data}; {card.reference}) "
            f"after a symmetry-kept relaxation, for the screen's top candidates, beside the ML "
            f"κ (95 % interval) and σ (std over ensemble members of log10 κ). κ in W/m/K. "
            f"Settings: {settings}. Disagreement: κ_ML / κ_phono3py beyond "
            f"{vc.disagreement_factor:g}× either way. Flags: {', '.join(KAPPA_FLAGS)} "
            "(kept, never dropped). Parity plot: verify/parity.png; table: verify/verified.csv.",
            *body,
            timing_section(verified, wall_s, vc.workers),
            validation_text,
            title="Tier 2 of the screen: phono3py κ of the top candidates",
        )
        metrics = _headline(counts, verified, validation, wall_s, cfg.tracking.get("aliases"))
        metrics_path = root / cfg.paths.metrics_dir / "headline" / "verify.json"
        numbers = {k: float(v) for k, v in metrics.items() if not is_count(k.split(".")[-1])}
        if run is not None:
            log_params({k: v for k, v in metrics.items() if is_count(k.split(".")[-1])})
        finish_study(run, report, metrics_path, metrics, [csv, png], "verify", [(numbers, None)])
    log.info(
        "verify: %d candidates, %d computed, %d disagree > %g×, %.1f s",
        n_in, counts["n_computed"], int(verified["disagree"].sum()), vc.disagreement_factor,
        time.perf_counter() - t_start,
    )  # fmt: skip
    return metrics


def verify_files(
    cfg: DictConfig,
    files: Sequence[str],
    *,
    use_cache: bool = True,
    workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """phono3py κ of the user's structure files with the ``verify`` potential and settings.

    ``verify.max_primitive_atoms`` does not apply (the supercell guards of the settings do).

    Args:
        cfg: full config (``verify``, ``validation``).
        files: CIF / POSCAR / CONTCAR / ``*.vasp`` paths.
        use_cache: read and write ``verify.cache_dir`` (and reuse ``verify.reuse_caches``);
            False computes everything in a temporary cache.
        workers: worker processes (default ``verify.workers``).
        device: ``cpu`` / ``cuda`` / ``auto`` (default ``verify.device``).
        progress: progress bar with ETA.

    Returns:
        One row per file, in order: ``id`` (the path as given), ``formula`` (reduced, empty
        when the file could not be read), :data:`PHYSICS_COLUMNS` and, after
        ``kappa_phono3py``, ``kappa_phono3py_corrected`` (× 10^offset, the softening correction
        of :func:`validation_section` when the phonons stage validated this potential and these
        settings; NaN otherwise).
    """
    vc = VerifyConfig.from_cfg(cfg, project_root())
    if workers is not None:
        vc = replace(vc, workers=int(workers))
    if device is not None:
        vc = replace(vc, device=str(device))
    opts = ValidationOptions.for_structures(cfg.get("validation"))
    parsed = [read_structure(f, opts) for f in files]
    crystals = [c for c, _ in parsed]
    formulas = [
        c.to_structure().composition.reduced_formula if c is not None else "" for c in crystals
    ]
    with tempfile.TemporaryDirectory(prefix="kappaflow-verify-") as tmp:
        if not use_cache:
            vc = replace(vc, cache_dir=Path(tmp), reuse_caches=())
        table = physics_kappa(
            [str(f) for f in files],
            crystals,
            [r for _, r in parsed],
            vc,
            progress=progress,
        )
    table.insert(1, "formula", formulas)
    try:  # the phonons stage's validated κ set, when this project has computed one
        offset = validation_section(cfg, project_root())[2]
    except FileNotFoundError as err:
        log.warning("no softening correction: %s", err)
        offset = float("nan")
    table.insert(
        table.columns.get_loc("kappa_phono3py") + 1,
        "kappa_phono3py_corrected",
        table["kappa_phono3py"].to_numpy(float) * 10**offset,
    )
    return table


def main() -> None:
    """Run the DVC stage ``verify`` from the command line: ``pipelines/verify.py``.

    Usage: ``python pipelines/verify.py [key=value ...]``.
    """
    from kappaflow.stages.common import run_stage

    run_stage(verify_stage)
