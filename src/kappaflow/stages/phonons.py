"""DVC stage ``phonons``: phonon descriptors from a universal potential, and whether they help.

Reads ``phonons`` (potential, settings, datasets, study), the dataset cards, the protocol keys of
``evaluation`` (:func:`protocol_of`: the folds, not the trainer or the studies) and ``seed``.

1. For every structure of ``phonons.datasets`` (prepared rows): the descriptors of
   :mod:`kappaflow.phonons.descriptors` (cached per structure, both cores, progress bar with ETA).
   A structure that cannot be computed keeps its row with the reason; flagged structures
   (imaginary modes, unconverged relaxation, broken symmetry) keep their values and the flag.
2. Study on ``phonons.study.datasets``: on the evaluation protocol's grouped folds (the folds of
   ``finetune`` and ``evaluate``), a random forest on Magpie composition features alone
   (the ``magpie_rf`` baseline), on Magpie + the descriptors, and on the descriptors alone;
   log10-MAE, MAPE, Spearman, within 2×, the paired difference to the baseline fold by fold, and
   the error per structure family.

Outputs: ``data/phonons/tables/<dataset>.parquet`` (one row per prepared structure: ``id``,
``formula``, descriptors, ``flags``, ``reason``...), ``data/phonons/cache/`` (persistent
per-structure cache), ``reports/phonons.md``, ``metrics/headline/phonons.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.evaluation.baselines import FOREST_N_JOBS
from kappaflow.evaluation.families import families_of, family_error_section
from kappaflow.evaluation.paired import paired_comparison
from kappaflow.evaluation.protocol import (
    cross_validate,
    dataset_evaluation,
    magpie_rf_fit_predict,
    protocol_settings,
)
from kappaflow.evaluation.report import write_report
from kappaflow.features.composition import magpie_features
from kappaflow.io_utils import headline_metrics
from kappaflow.layout import interim_dir, kappa_table, load_prepared, project_root
from kappaflow.phonons.batch import compute_descriptors
from kappaflow.phonons.conductivity import KAPPA_FLAGS, KappaSettings, method_label
from kappaflow.phonons.descriptors import DESCRIPTOR_COLUMNS, FLAGS, PhononSettings
from kappaflow.phonons.potential import potential_card
from kappaflow.phonons.validation import (
    kappa_table_path,
    kappa_validation,
    median_offset,
    validation_markdown,
)
from kappaflow.stages.common import finish_study
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.families import structure_family
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias

log = logging.getLogger(__name__)

#: Study methods: name -> (feature blocks, learner). ``rf``: the ``magpie_rf`` baseline's random
#: forest (log10 κ); ``et``: extremely randomized trees (500, half the features per split, median
#: imputation of descriptors that could not be computed). Both learners with and without the
#: descriptors separate the learner's effect from the descriptors'.
METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "magpie_rf": (("magpie",), "rf"),
    "magpie_phonon_rf": (("magpie", "phonon"), "rf"),
    "magpie_et": (("magpie",), "et"),
    "magpie_phonon_et": (("magpie", "phonon"), "et"),
    "phonon_et": (("phonon",), "et"),
}
#: Paired comparisons reported: (candidate, reference).
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("magpie_phonon_rf", "magpie_rf"),
    ("magpie_et", "magpie_rf"),
    ("magpie_phonon_et", "magpie_rf"),
    ("magpie_phonon_et", "magpie_et"),
    ("phonon_et", "magpie_rf"),
)
#: With phono3py κ (``phonons.kappa.datasets``): the κ itself (no fit, the physics route's
#: error against the labels on the same folds), κ as a feature, and Δ-learning (extra trees on
#: Magpie + descriptors fitted to log10 κ − log10 κ_phono3py).
#: ``phono3py_offset`` is the funnel's tier 2 as a model (the ``verify`` stage's corrected κ):
#: κ_phono3py × 10^(median log10 label/κ_phono3py of the training rows) where phono3py gave a
#: κ, Magpie extra trees (``magpie_et``) on the rows it did not (over the CPU budget, a family
#: not computed).
KAPPA_METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "phono3py": (("none",), "none"),
    "magpie_phonon_kappa_et": (("magpie", "phonon", "kappa"), "et"),
    "delta_phono3py_et": (("magpie", "phonon"), "delta"),
    "phono3py_offset": (("magpie",), "offset"),
}
KAPPA_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("phono3py", "magpie_rf"),
    ("magpie_phonon_kappa_et", "magpie_rf"),
    ("delta_phono3py_et", "magpie_rf"),
    ("delta_phono3py_et", "magpie_et"),
    ("phono3py_offset", "magpie_rf"),
    ("phono3py_offset", "magpie_et"),
)
#: Methods whose log10-MAE goes to the headline metrics (the rest: reports/phonons.md).
HEADLINE = (
    "magpie_rf",
    "magpie_et",
    "magpie_phonon_et",
    "phono3py",
    "delta_phono3py_et",
    "phono3py_offset",
)
#: Descriptors that can be negative (kept linear); the others enter as log10.
SIGNED_DESCRIPTORS = (
    "ph_gruneisen_thermal",
    "ph_log10_kappa_slack",
    "ph_relax_volume_change",
    "ph_min_freq_thz",
)


def phonon_dir(cfg: DictConfig) -> Path:
    """``data/phonons`` under the project root."""
    return project_root() / "data" / "phonons"


def descriptor_table(
    cfg: DictConfig, dataset: str, progress: bool = True, kind: str = "descriptors"
) -> pd.DataFrame:
    """Compute (or read from the cache) the descriptors (or phono3py κ) of a dataset's structures.

    Args:
        cfg: full config (``phonons``, paths of the prepared sets).
        dataset: dataset card name.
        progress: progress bar with ETA.
        kind: ``descriptors`` (``phonons.settings``) or ``kappa`` (``phonons.kappa.settings``).
    """
    pcfg = cfg.phonons
    aliases = cfg.tracking.get("aliases")
    table = load_prepared(interim_dir(cfg, dataset))
    crystals = [
        CrystalArrays.from_row(r.lattice, r.numbers, r.frac_coords)
        for r in table.itertuples(index=False)
    ]
    if kind == "kappa":
        settings: Any = KappaSettings(**OmegaConf.to_container(pcfg.kappa.settings, resolve=True))
    else:
        settings = PhononSettings(**OmegaConf.to_container(pcfg.settings, resolve=True))
    ids = table.id.astype(str).tolist()
    skip = [""] * len(table)  # why a structure is not computed ("" = computed)
    families = pcfg.kappa.get("families") if kind == "kappa" else None
    if families is not None:
        wanted = {str(x) for x in families}
        pairs = zip(table.formula, table.spacegroup, strict=True)
        for i, (f, g) in enumerate(pairs):
            family = structure_family(str(f), int(g))
            if family not in wanted:
                skip[i] = f"family {family} not in phonons.kappa.families (CPU budget)"
    budget = pcfg.kappa.get("max_force_atoms") if kind == "kappa" else None
    if budget is not None:
        from kappaflow.phonons.plan import budget_reason

        for i, crystal in enumerate(crystals):
            if not skip[i]:
                skip[i] = budget_reason(
                    crystal, settings, int(budget), "phonons.kappa.max_force_atoms"
                )
    keep = np.array([not r for r in skip], dtype=bool)
    frame = compute_descriptors(
        [i for i, k in zip(ids, keep, strict=True) if k],
        [c for c, k in zip(crystals, keep, strict=True) if k],
        settings,
        str(pcfg.potential),
        phonon_dir(cfg) / "cache",
        kind=kind,
        workers=int(pcfg.workers),
        device=str(pcfg.device),
        progress=progress,
        desc=f"{'phono3py κ' if kind == 'kappa' else 'phonons'} {dataset_alias(dataset, aliases)}",
    )
    if not keep.all():  # every structure keeps a row: the skipped ones say why
        skipped = pd.DataFrame({"id": [i for i, k in zip(ids, keep, strict=True) if not k]})
        skipped["reason"] = [r for r in skip if r]
        frame = pd.concat([frame, skipped], ignore_index=True)
        frame = frame.set_index("id").loc[ids].reset_index()
        frame["flags"] = frame["flags"].fillna("")
        frame["cached"] = frame["cached"].astype("boolean").fillna(False).astype(bool)
        frame[["n_primitive", "seconds"]] = frame[["n_primitive", "seconds"]].fillna(0)
    frame.insert(1, "formula", table.formula.astype(str).to_numpy())
    return frame


def phonon_features(descriptors: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """Descriptor matrix aligned to ``ids`` (NaN where not computed; ``imaginary`` as 0/1).

    Raises:
        KeyError: an id has no descriptor row (the stage's dataset lists disagree).
    """
    indexed = descriptors.set_index("id")
    missing = sorted(set(ids.astype(str)) - set(indexed.index))
    if missing:
        raise KeyError(f"{len(missing)} ids have no phonon descriptors, e.g. {missing[:3]}")
    rows = indexed.loc[ids.astype(str)]
    imaginary = rows["flags"].str.contains("imaginary").to_numpy(dtype=np.float64)
    columns = []
    for name in DESCRIPTOR_COLUMNS:
        v = rows[name].to_numpy(np.float64)
        if name not in SIGNED_DESCRIPTORS:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        columns.append(v)
    return np.column_stack([*columns, imaginary])


def _fit_predict(
    table: pd.DataFrame, X: np.ndarray, learner: str, seed: int, base: np.ndarray | None = None
) -> Any:
    """Return a ``fit_predict`` for :func:`cross_validate` (κ in W/m/K).

    Args:
        table: the dataset's rows (``kappa``).
        X: features, one row per table row.
        learner: ``rf`` (the baseline's forest), ``et`` (extra trees), ``delta`` (extra trees
            fitted to log10 κ − ``base``, Δ-learning), ``none`` (predict 10**``base``, no fit),
            ``offset`` (10**(``base`` + the training rows' median of log10 κ − ``base``) where
            ``base`` is finite, extra trees on ``X`` elsewhere).
        seed: random state.
        base: log10 κ of a physics model (phono3py) per row; for ``none`` and ``delta`` NaN rows
            fall back to the median of the training rows' finite values.
    """
    if learner == "rf":
        return magpie_rf_fit_predict(
            table, seed=seed, featurizer=lambda _f: X, n_jobs=FOREST_N_JOBS
        )
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    log_kappa = np.log10(table.kappa.to_numpy(np.float64))

    def filled(train: np.ndarray) -> np.ndarray:
        assert base is not None
        finite = base[train][np.isfinite(base[train])]
        fallback = float(np.median(finite)) if len(finite) else float(np.median(log_kappa[train]))
        return np.where(np.isfinite(base), base, fallback)

    def fit_predict(train: np.ndarray, _val: np.ndarray, test: np.ndarray) -> np.ndarray:
        offset = filled(train) if learner in ("delta", "none") else np.zeros(len(table))
        if learner == "none":
            return np.power(10.0, offset[test])
        model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            ExtraTreesRegressor(500, max_features=0.5, random_state=seed, n_jobs=FOREST_N_JOBS),
        )
        model.fit(X[train], log_kappa[train] - offset[train])
        pred = model.predict(X[test]) + offset[test]
        if learner == "offset":
            assert base is not None
            known = np.isfinite(base[train])
            physics = np.isfinite(base[test])
            if known.any():
                shift = median_offset(base[train][known], log_kappa[train][known])
                pred[physics] = base[test][physics] + shift
        return np.power(10.0, pred)

    return fit_predict


def protocol_of(cfg: DictConfig, dataset: str) -> dict[str, Any]:
    """Return the protocol's fold settings for ``dataset`` (those of ``finetune``, ``evaluate``).

    Reads only the protocol keys of ``evaluation`` (the ones DVC tracks for this stage), so a
    change of ``evaluation.trainer`` or of a study's settings does not re-run the phonons study.
    """
    node = {
        "n_splits": cfg.evaluation.n_splits,
        "n_repeats": cfg.evaluation.n_repeats,
        "seed": cfg.evaluation.seed,
        "val_fraction": cfg.evaluation.val_fraction,
        "group_level": cfg.evaluation.group_level,
        "per_dataset": cfg.evaluation.per_dataset,
    }
    return protocol_settings(dataset_evaluation(node, dataset))


def _study(
    cfg: DictConfig, dataset: str, descriptors: pd.DataFrame, kappa: pd.DataFrame | None = None
) -> tuple[dict[str, Any], list[str]]:
    table, _ = kappa_table(cfg, dataset)
    blocks = {
        "magpie": np.asarray(magpie_features(table.formula.astype(str).tolist()), np.float64),
        "phonon": phonon_features(descriptors, table.id),
        "none": np.zeros((len(table), 1)),
    }
    methods, comparisons, base = dict(METHODS), list(COMPARISONS), None
    if kappa is not None:
        k = kappa.set_index("id").loc[table.id.astype(str), "ph3_kappa_w_mk"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            base = np.where(k > 0, np.log10(np.where(k > 0, k, 1.0)), np.nan)
        blocks["kappa"] = base[:, None]
        methods |= KAPPA_METHODS
        comparisons += KAPPA_COMPARISONS
    settings = protocol_of(cfg, dataset)
    records: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    oofs: dict[str, pd.DataFrame] = {}
    for method, (parts, learner) in methods.items():
        X = np.column_stack([blocks[p] for p in parts])
        fit_predict = _fit_predict(table, X, learner, int(cfg.seed), base)
        result = cross_validate(table, fit_predict, **settings, progress=False)
        records[method] = result.to_dict()
        oofs[method] = result.predictions
        s = result.summary
        rows.append(
            {
                "method": method,
                "log10_mae": s["log10_mae_mean"],
                "log10_mae_std": s["log10_mae_std"],
                "mape": s["mape_mean"],
                "spearman": s["spearman_mean"],
                "within_2x": s["within_2x_mean"] / 100.0,
            }
        )
    metrics: dict[str, Any] = {
        f"{r['method']}_log10_mae": r["log10_mae"] for r in rows if r["method"] in HEADLINE
    }
    lines = [
        f"## {dataset} ({len(table)} compounds, {settings['n_repeats']}×{settings['n_splits']} "
        "grouped folds)",
        "| method | log10-MAE (mean ± std over folds) | MAPE % | Spearman | within 2× |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['log10_mae']:.3f} ± {r['log10_mae_std']:.3f} | {r['mape']:.0f} | "
        f"{r['spearman']:.3f} | {100 * r['within_2x']:.0f} % |"
        for r in rows
    ]
    lines.append("")
    for method, reference in comparisons:
        cmp = paired_comparison(records[method], records[reference])
        lines.append(f"* {method} − {reference}: {cmp.text()}")
    lines += [
        "",
        family_error_section(
            oofs,
            families_of(table),
            "Out-of-fold log10-MAE (within 2×) per structure family (n compounds; errors of all "
            "repeats):",
        ),
    ]
    return metrics, ["\n".join(lines)]


def _coverage_section(frames: dict[str, pd.DataFrame], flags: tuple[str, ...] = FLAGS) -> str:
    lines = [
        "| dataset | structures | computed | "
        + " | ".join(f.replace("_", " ") for f in flags)
        + " | not computed | s/structure (1 core, when computed) |",
        "|---|---|---|" + "---|" * len(flags) + "---|---|",
    ]
    for dataset, f in frames.items():
        ok = f.reason == ""
        secs = f.loc[ok, "seconds"]
        counts = [int(f["flags"].str.contains(flag).sum()) for flag in flags]
        per = f"{secs.mean():.1f}" if len(secs) else "–"
        lines.append(
            f"| {dataset} | {len(f)} | {int(ok.sum())} | "
            + " | ".join(map(str, counts))
            + f" | {int((~ok).sum())} | {per} |"
        )
    reasons = pd.concat(frames.values()).query("reason != ''").reason.value_counts()
    if len(reasons):
        lines += ["", "Not computed:", *[f"* {n}× {r}" for r, n in reasons.items()]]
    return "\n".join(lines)


#: The report's text when ``phonons.datasets`` is empty (the default profile).
NOT_CONFIGURED = (
    "No descriptors computed: `phonons.datasets` is empty in this configuration (the default "
    "profile keeps `dvc repro` under an hour on 2 CPU cores; with SevenNet-0 the descriptors "
    "added nothing measurable over Magpie composition features). `+experiment=paper` computes "
    "them for D1, D2 and MIX and phono3py κ for D1; on a CPU: "
    "`-S 'phonons.datasets=[paraisite_d1,paraisite_d2,paraisite_mix]' "
    "-S 'phonons.study.datasets=[paraisite_d1,paraisite_d2,paraisite_mix]' "
    "-S 'phonons.kappa.datasets=[paraisite_d1]'`."
)


def phonons_stage(cfg: DictConfig) -> dict[str, Any]:
    """Compute the descriptors of every configured dataset, then run the study."""
    pcfg = cfg.phonons
    root = project_root()
    card = potential_card(str(pcfg.potential))
    tables = phonon_dir(cfg) / "tables"
    if tables.exists():
        shutil.rmtree(tables)  # only this run's datasets (a DVC output folder)
    tables.mkdir(parents=True)
    (phonon_dir(cfg) / "cache").mkdir(exist_ok=True)  # a DVC output even when nothing is computed
    study_sets = [str(d) for d in pcfg.study.datasets]
    unknown = sorted(set(study_sets) - {str(d) for d in pcfg.datasets})
    if unknown:
        raise ValueError(f"phonons.study.datasets {unknown} are not in phonons.datasets")
    metrics: dict[str, Any] = {}
    aliases = cfg.tracking.get("aliases")
    with start_stage_run(
        cfg, "phonons", run_name="phonons", dvc_stage="phonons", purpose="transfer"
    ) as run:
        frames: dict[str, pd.DataFrame] = {}
        for dataset in pcfg.datasets:
            frame = descriptor_table(cfg, str(dataset))
            frame.to_parquet(tables / f"{dataset}.parquet", index=False)
            frames[str(dataset)] = frame
            metrics[f"computed_{dataset_alias(str(dataset), aliases)}"] = float(
                (frame.reason == "").mean()
            )
        kappas: dict[str, pd.DataFrame] = {}
        for dataset in pcfg.kappa.datasets:
            frame = descriptor_table(cfg, str(dataset), kind="kappa")
            frame.to_parquet(kappa_table_path(root, str(dataset)), index=False)
            kappas[str(dataset)] = frame
        sections = [
            f"Potential: {card.name} ({card.package} {card.model}; trained on "
            f"{card.training_data}; {card.reference}). Settings: "
            f"{OmegaConf.to_container(pcfg.settings, resolve=True)}.",
            _coverage_section(frames) if frames else NOT_CONFIGURED,
        ]
        if kappas:
            sections += [
                "## phono3py κ from the potential",
                f"{method_label(pcfg.kappa.settings.get('method'))} at 300 K from the "
                "potential's second- and third-order force constants; "
                f"settings {OmegaConf.to_container(pcfg.kappa.settings, resolve=True)}.",
                _coverage_section(kappas, KAPPA_FLAGS),
                validation_markdown(
                    kappa_validation(kappas, {d: kappa_table(cfg, d)[0] for d in kappas})
                ),
            ]
        for dataset in study_sets:
            m, parts = _study(cfg, dataset, frames[dataset], kappas.get(dataset))
            metrics[dataset_alias(dataset, aliases)] = m
            sections += parts
        report = write_report(
            root / "reports" / "phonons.md", *sections, title="Phonon descriptors"
        )
        metrics_path = root / cfg.paths.metrics_dir / "headline" / "phonons.json"
        metrics = headline_metrics(metrics)
        finish_study(run, report, metrics_path, metrics, [], "phonons")
    return metrics


def main() -> None:
    """Run the DVC stage ``phonons`` from the command line: ``pipelines/phonons.py``.

    Usage: ``python pipelines/phonons.py [key=value ...]``.
    """
    from kappaflow.stages.common import run_stage

    run_stage(phonons_stage)
