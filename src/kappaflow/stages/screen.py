"""The ``screen`` stage: score the pool with ``models:/<registry.model_name>@champion``.

Who scores what (:mod:`kappaflow.screen.funnel`): a pool larger than ``screen.funnel``'s
teacher sample plus both shortlists goes through the **funnel** — the champion scores a seeded
teacher sample and every user file, a student distilled from it (extra trees on Magpie + cell
scalars, :mod:`kappaflow.screen.surrogate`) scores the rest in seconds, and the champion
re-scores the student's ``shortlist`` highest- and lowest-κ crystals; smaller pools (and
``screen.funnel.enabled: false``) are scored by the champion alone. A progress bar with ETA
runs over the whole pool. Under ``screen.out_dir`` (``reports/screen``):

* ``ranked.csv``: every successfully scored structure, sorted by κ descending: ``rank, id,
  dataset, formula, spacegroup, kappa`` (W/m/K), ``log10_kappa``, ``sigma_log10`` (std over
  members of log10 κ, decades), ``kappa_lo68``… ``kappa_hi95`` (W/m/K, calibrated intervals),
  ``in_domain``, ``ood_reason``, ``nn_distance``, ``scored_by`` (``champion`` / ``surrogate``:
  student rows have κ only — no σ, interval or embedding distance, and their ``in_domain``
  checks the elements alone), ``in_training_set`` (same formula + space group as a material
  the model was trained on), ``n_duplicates``, ``source`` (relative to the project when inside
  it); ``formula_conventional`` (``PbTe``) beside pymatgen's ``formula`` (``TePb``); κ columns
  rounded to 3 significant digits, σ and distances to 3 decimals;
* ``top_high.csv`` / ``top_low.csv``: the ``screen.top_n`` highest-κ (diamond-like heat
  spreaders, Ju et al.) and lowest-κ (thermoelectric candidates, ParAIsite) structures scored
  by the champion, from in-domain ones only when ``screen.top_in_domain_only``;
* ``quarantine.csv``: structures that could not be scored (``id, dataset, source, reason,
  detail``);
* ``kappa_vs_sigma.png``: κ vs σ of the champion's rows, in-domain vs out-of-domain;
  ``surrogate_agreement.png``: student vs champion on held-out teacher rows;
* ``summary.json``: counts (``n_champion`` / ``n_surrogate``), the funnel's settings, phase
  seconds and agreement (Spearman, log10-MAE, top/bottom recall), throughput (crystals/s of
  the whole scoring), wall time, model version (a plain DVC out);
* ``headline.json``: the DVC metrics (:func:`screen_headline`).

Checked: ``len(ranked) + len(quarantine) == pool.n_total`` (every structure of the
deduplicated pool is accounted for). Everything is logged to an MLflow run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.data.validation import ValidationOptions, conventional_formula
from kappaflow.io_utils import write_json, write_metrics
from kappaflow.layout import interim_dir, load_prepared, project_root
from kappaflow.registry.champion import NoChampionError, load_champion, resolve_model
from kappaflow.registry.predictor import COLUMNS
from kappaflow.screen.funnel import CHAMPION, ChampionScorer, funnel_scores
from kappaflow.screen.pool import load_pool
from kappaflow.screen.surrogate import FunnelSettings
from kappaflow.structure.cif import escape_control
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import is_count
from kappaflow.tracking.runs import (
    log_artifact,
    log_dataset,
    log_figure,
    log_params,
    setup_experiment,
)

log = logging.getLogger(__name__)

#: Columns of ``ranked.csv``: the predictor's :data:`~kappaflow.registry.predictor.COLUMNS`
#: (``id``/``formula`` among the pool's columns; no ``error``: failed crystals go to the failures
#: file) between the pool's and the screen's own columns.
RANKED_COLUMNS = (
    "rank",
    "id",
    "dataset",
    "formula",
    "formula_conventional",
    "spacegroup",
    *(c for c in COLUMNS if c not in ("id", "formula", "error")),
    "scored_by",
    "in_training_set",
    "n_duplicates",
    "source",
)


#: Columns written with 3 significant digits (κ, W/m/K) and with 3 decimals (decades, distances).
KAPPA_COLUMNS = ("kappa", "kappa_lo68", "kappa_hi68", "kappa_lo95", "kappa_hi95")
DECIMAL_COLUMNS = ("log10_kappa", "sigma_log10", "nn_distance")


def round_significant(values: Any, digits: int = 3) -> np.ndarray:
    """Return ``values`` rounded to ``digits`` significant digits (NaN, inf and 0 kept)."""
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x) & (x != 0)
    out = x.copy()
    mag = np.floor(np.log10(np.abs(x[finite])))
    scale = 10.0 ** (digits - 1 - mag)
    out[finite] = np.round(x[finite] * scale) / scale
    return out


def for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """Return a copy for the CSVs: κ to 3 significant digits, σ and distances to 3 decimals.

    The full-precision values stay in memory for the plot and the summary
    (``kappaflow predict --json`` keeps full precision too).
    """
    out = table.copy()
    for col in KAPPA_COLUMNS:
        if col in out:
            out[col] = round_significant(out[col])
    for col in DECIMAL_COLUMNS:
        if col in out:
            out[col] = out[col].astype(float).round(3)
    return out


def relative_source(source: str, root: Path) -> str:
    """Return ``source`` relative to the project ``root`` when it lies inside it, else as given."""
    try:
        return Path(source).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return source


def training_keys(cfg: DictConfig, dataset: str | None) -> set[str]:
    """``formula@spacegroup`` keys of the model's training materials (empty if unknown)."""
    if not dataset or dataset not in cfg.datasets:
        return set()
    path = interim_dir(cfg, dataset)
    if not (path / "valid.parquet").is_file():
        return set()
    t = load_prepared(path)[["formula", "spacegroup"]]
    return set(t["formula"].astype(str) + "@" + t["spacegroup"].astype(str))


def kappa_sigma_plot(ranked: pd.DataFrame, path: Path) -> Any:
    """Scatter of κ (W/m/K, log axis) vs σ (log10 κ), in-domain vs out-of-domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for flag, color, label in ((False, "0.6", "out of domain"), (True, "C0", "in domain")):
        sub = ranked[ranked["in_domain"] == flag]
        ax.scatter(
            sub["kappa"], sub["sigma_log10"], s=3, alpha=0.4, c=color, lw=0,
            label=f"{label} ({len(sub)})", rasterized=True,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("predicted κ_L (W/m/K)")
    ax.set_ylabel("σ: std of log10 κ over ensemble members")
    ax.set_title(f"screening: {len(ranked)} structures")
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return fig


def agreement_plot(tier1: dict[str, Any] | None, n_pool: int, path: Path) -> Any:
    """Student vs champion log10 κ on the held-out teacher rows (or why there is no funnel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    held = (tier1 or {}).get("holdout") or {}
    if not held.get("champion"):
        ax.axis("off")
        ax.text(
            0.02, 0.5,
            f"no tier-1 surrogate: the champion scored all {n_pool} structures\n"
            "(pool not larger than screen.funnel.teacher_size + 2 x shortlist, or funnel off)",
            fontsize=8, va="center",
        )  # fmt: skip
    else:
        c, s = np.asarray(held["champion"]), np.asarray(held["student"])
        ag = tier1["agreement"]  # type: ignore[index]
        ax.scatter(c, s, s=6, alpha=0.5, lw=0)
        lo, hi = float(min(c.min(), s.min())), float(max(c.max(), s.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="1:1")
        ax.set_xlabel("champion log10 κ (W/m/K)")
        ax.set_ylabel("tier-1 student log10 κ (W/m/K)")
        ax.set_title(
            f"held-out teacher rows (n={len(c)}): ρ={ag['spearman']:.3f}, "
            f"MAE={ag['log10_mae']:.3f}\n"
            f"top/bottom recall {ag['top_recall']:.2f}/{ag['bottom_recall']:.2f}",
            fontsize=9,
        )
        ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return fig


def _top(ranked: pd.DataFrame, n: int, in_domain_only: bool, high: bool) -> pd.DataFrame:
    pool = ranked[ranked["in_domain"]] if in_domain_only else ranked
    return (pool.head(n) if high else pool.iloc[::-1].head(n)).reset_index(drop=True)


def screen_headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Return the DVC metrics of ``screen`` (``headline.json``): counts, throughput (1/s).

    Args:
        summary: the full ``summary.json`` record (a plain DVC out: strings, per-dataset counts).

    Returns:
        ``n_scored``, ``n_ood``, ``n_quarantined``, ``throughput_per_s`` and, when the funnel
        ran, the student's agreement with the champion on held-out teacher rows
        (``surrogate_spearman``, ``surrogate_top_recall``, ``surrogate_bottom_recall``); absent
        keys are None, left out of the file by :func:`~kappaflow.io_utils.write_metrics`.
    """
    head = {k: summary.get(k) for k in ("n_scored", "n_ood", "n_quarantined", "throughput_per_s")}
    agree = (summary.get("funnel") or {}).get("agreement") or {}
    head["surrogate_spearman"] = agree.get("spearman")
    head["surrogate_top_recall"] = agree.get("top_recall")
    head["surrogate_bottom_recall"] = agree.get("bottom_recall")
    return head


def _no_champion(out: Path, reason: str) -> dict[str, Any]:
    """Write the stage's outputs for a pipeline without a champion: empty tables, the reason."""
    from kappaflow.evaluation.plots import message_plot

    log.warning("screen: nothing scored: %s", reason)
    for name in ("ranked.csv", "top_high.csv", "top_low.csv"):
        pd.DataFrame(columns=list(RANKED_COLUMNS)).to_csv(out / name, index=False)
    pd.DataFrame(columns=["id", "dataset", "source", "reason", "detail"]).to_csv(
        out / "quarantine.csv", index=False
    )
    for plot in ("kappa_vs_sigma.png", "surrogate_agreement.png"):  # both DVC plot outputs
        message_plot(out / plot, "no champion to screen with: " + reason[:300])
    summary = {"no_champion": reason, "n_scored": 0, "n_quarantined": 0}
    write_json(out / "summary.json", summary)
    write_metrics(out / "headline.json", screen_headline(summary))
    print(f"screen: {reason}")
    return summary


def screen_stage(
    cfg: DictConfig,
    *extra_dirs: str,
    model_uri: str | None = None,
    only_dirs: bool = False,
) -> dict[str, Any]:
    """Score the pool with the champion; write the ranked list, top lists, plot and summary.

    Args:
        cfg: full config.
        *extra_dirs: structure directories added to ``screen.extra_dirs``.
        model_uri: score with this model instead of the champion.
        only_dirs: score the user directories only (no prepared datasets).

    Returns:
        The summary (also ``summary.json``).

    Raises:
        RuntimeError: the count check fails (a structure was lost or counted twice).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    sc = cfg.screen
    root = project_root()
    out = root / str(sc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_experiment(cfg, "registry")
    try:
        uri, model_info = resolve_model(cfg, model_uri)
    except NoChampionError as err:  # the gate kept every candidate out: say so, score nothing
        return _no_champion(out, str(err))
    model = load_champion(uri, str(sc.device), model_info)  # verified; runs no registry code
    ensemble, domain = model.ensemble, model.domain
    train_dataset = model.spec.get("meta", {}).get("dataset")
    pool = load_pool(cfg, extra_dirs, include_datasets=not only_dirs)
    batch = int(sc.batch_size)
    funnel = FunnelSettings.from_mapping(sc.get("funnel"))
    n_prepared = int((pool.index["row"] >= 0).sum())
    use_funnel = funnel.applies(n_prepared)

    with start_stage_run(
        cfg,
        "screen",
        run_name="screen",
        dvc_stage="screen",
        tags={"model_uri": uri, "funnel": str(use_funnel).lower()},
        params=["screen", "graphs", "validation"],
    ) as run:
        if run is not None:
            log_dataset(pool.index.drop(columns=["row"]), name="screen_pool", context="screen")
        val = cfg.get("validation") or {}
        champion = ChampionScorer(
            pool,
            ensemble,
            domain,
            batch,
            float(val.get("symprec", 0.1)),
            str(val.get("symmetry_backend", "spglib")),
            ValidationOptions.for_structures(cfg.get("validation"), ensemble.graph.cutoff),
        )
        t0 = time.perf_counter()
        with tqdm(total=pool.n_total, desc="screen", unit="crystal") as bar:
            if use_funnel:
                scored, tier1 = funnel_scores(pool, champion, funnel, int(cfg.seed), bar)
            else:
                log.info("screen: the champion scores all %d structures", pool.n_total)
                scored, tier1 = champion.score(np.arange(pool.n_total), bar), None
        scoring_s = time.perf_counter() - t0
        index = pool.index.reset_index(drop=True)
        if (
            len(scored) != len(index)
            or not (scored["id"].to_numpy() == index["id"].to_numpy()).all()
        ):
            raise RuntimeError("screen: predictions are not aligned with the pool index")
        scored = scored.assign(
            dataset=index["dataset"],
            n_duplicates=index["n_duplicates"],
            source=index["source"].map(
                {s: escape_control(relative_source(s, root)) for s in index["source"].unique()}
            ),
            formula=np.where(scored["formula"] != "", scored["formula"], index["formula"]),
        )
        scored["formula_conventional"] = scored["formula"].astype(str).map(conventional_formula)
        ok = scored["error"] == ""
        keys = training_keys(cfg, train_dataset)
        ranked = scored.loc[ok].copy()
        ranked["in_training_set"] = (
            ranked["formula"] + "@" + ranked["spacegroup"].astype(str)
        ).isin(keys)
        ranked = ranked.sort_values("kappa", ascending=False, kind="stable").reset_index(drop=True)
        ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
        ranked = ranked[list(RANKED_COLUMNS)]
        bad = scored.loc[~ok]
        reason = bad["error"].str.split(":", n=1).str[0]
        detail = bad["error"].str.split(":", n=1).str[1].fillna("").str.strip().map(escape_control)
        quarantine = pd.DataFrame(
            {
                "id": bad["id"],
                "dataset": bad["dataset"],
                "source": bad["source"],
                "reason": reason,
                "detail": detail,
            }
        )
        if len(ranked) + len(quarantine) != pool.n_total:
            raise RuntimeError(
                f"screen: {len(ranked)} ranked + {len(quarantine)} quarantined != "
                f"{pool.n_total} structures in the pool"
            )
        top_n, dom_only = int(sc.top_n), bool(sc.top_in_domain_only)
        by_champion = ranked[ranked["scored_by"] == CHAMPION].reset_index(drop=True)
        top_high = _top(by_champion, top_n, dom_only, high=True)
        top_low = _top(by_champion, top_n, dom_only, high=False)
        for_csv(ranked).to_csv(out / "ranked.csv", index=False)
        for_csv(top_high).to_csv(out / "top_high.csv", index=False)
        for_csv(top_low).to_csv(out / "top_low.csv", index=False)
        quarantine.to_csv(out / "quarantine.csv", index=False)
        fig = kappa_sigma_plot(by_champion, out / "kappa_vs_sigma.png")
        fig_agree = agreement_plot(tier1, pool.n_total, out / "surrogate_agreement.png")
        wall = time.perf_counter() - t_start
        summary = {
            "model_uri": uri,
            "model": model_info,
            "device": str(ensemble.device),
            "n_members": ensemble.n_members,
            "n_input": pool.n_input,
            "n_duplicates": pool.n_duplicates,
            "n_not_sampled": pool.n_not_sampled,
            "n_pool": pool.n_total,
            "n_scored": len(ranked),
            "n_quarantined": len(quarantine),
            "n_in_domain": int(ranked["in_domain"].sum()),
            "n_ood": int((~ranked["in_domain"]).sum()),
            "n_in_training_set": int(ranked["in_training_set"].sum()),
            "per_dataset": pool.per_dataset,
            "quarantine_reasons": quarantine["reason"].value_counts().to_dict(),
            "throughput_per_s": pool.n_total / scoring_s if scoring_s > 0 else math.nan,
            "scoring_s": scoring_s,
            "wall_s": wall,
            "batch_size": batch,
            "top_n": top_n,
            "n_champion": int((scored["scored_by"] == CHAMPION).sum()),
            "n_surrogate": int((scored["scored_by"] != CHAMPION).sum()),
            "funnel": None if tier1 is None else {k: v for k, v in tier1.items() if k != "holdout"},
        }
        write_json(out / "summary.json", summary)
        write_metrics(out / "headline.json", screen_headline(summary))
        if run is not None:
            import mlflow

            log_params({k: v for k, v in summary.items() if is_count(k)})
            mlflow.log_metrics(
                {
                    k: float(summary[k])
                    for k in ("throughput_per_s", "scoring_s", "wall_s")
                    if math.isfinite(float(summary[k]))
                }
            )
            agree = (tier1 or {}).get("agreement") or {}
            mlflow.log_metrics({f"surrogate_{k}": float(v) for k, v in agree.items()})
            log_figure(fig, "screen/kappa_vs_sigma.png")
            log_figure(fig_agree, "screen/surrogate_agreement.png")
            for name in ("ranked.csv", "top_high.csv", "top_low.csv", "quarantine.csv"):
                log_artifact(out / name, "screen")
            log_artifact(out / "summary.json", "screen")
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)
            plt.close(fig_agree)
    log.info(
        "screen: %d scored (%d out of domain), %d quarantined, %.1f crystals/s, %.1f s",
        len(ranked), summary["n_ood"], len(quarantine), summary["throughput_per_s"], wall,
    )  # fmt: skip
    return summary


def main() -> None:
    """Run the DVC stage ``screen`` from the command line: ``pipelines/screen.py``.

    Usage: ``python pipelines/screen.py [STRUCTURE_DIR ...] [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`screen_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(screen_stage)
