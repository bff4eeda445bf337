"""The ``extrapolate`` stage (Ju et al. 2021): does a model trained on low κ find high κ.

For each dataset of ``evaluation.extrapolation.datasets`` the compounds with κ at or above the
``quantile`` are held out (every row of a held-out material too, so no formula is on both
sides; :func:`~kappaflow.evaluation.extrapolation.extrapolation_split`). Each method of
``evaluation.extrapolation.methods`` (a transfer strategy, or the ``magpie_rf`` baseline) is
trained on the low-κ rows (early stopping on a grouped inner validation part of them) and ranks
every compound; :func:`~kappaflow.evaluation.extrapolation.extrapolation_metrics` scores how the
held-out high-κ compounds (κ >= threshold) come out: recall@k among all compounds and Spearman ρ
within them. Rows of held-out materials below the threshold are neither trained on nor scored.

Outputs: ``reports/extrapolation.md``, ``metrics/extrapolation.json`` (full record), the DVC
metrics ``metrics/headline/extrapolation.json`` (held-out Spearman ρ, first recall@k) and
``plots/extrapolation/rank_<dataset>.png`` (predicted vs true κ, held-out rows highlighted).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.data.leakage import material_keys
from kappaflow.data.splits import inner_validation_split
from kappaflow.evaluation.extrapolation import extrapolation_metrics, extrapolation_split
from kappaflow.evaluation.plots import extrapolation_plot
from kappaflow.evaluation.protocol import BASELINES, dataset_evaluation
from kappaflow.evaluation.report import write_report
from kappaflow.io_utils import write_metrics
from kappaflow.layout import kappa_table, project_root
from kappaflow.stages.common import finish_study
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias, is_count
from kappaflow.transfer.fit_predict import build_fit_predict, fold_cache_dir, with_strategy

log = logging.getLogger(__name__)

#: Methods that are baselines rather than transfer strategies.
BASELINE_METHODS = ("magpie_rf",)


def extrapolation_predictions(
    cfg: DictConfig, method: str, dataset: str, table: pd.DataFrame, train_rows: np.ndarray
) -> np.ndarray:
    """Train ``method`` on ``train_rows`` of ``table`` and predict κ (W/m/K) for every row."""
    ev = dataset_evaluation(cfg.evaluation, dataset)
    keys = material_keys(table).to_numpy()
    train, val = inner_validation_split(train_rows, keys, float(ev.val_fraction), int(cfg.seed))
    every = np.arange(len(table), dtype=np.int64)
    if method in BASELINE_METHODS:
        fit_predict = BASELINES["magpie_rf"](table, int(cfg.seed))
    else:
        s_cfg = with_strategy(cfg, method)
        work = fold_cache_dir(s_cfg, method, dataset).with_name(
            fold_cache_dir(s_cfg, method, dataset).name + "-extrapolation"
        )
        fit_predict = build_fit_predict(s_cfg, method, dataset, table, work)
    return np.asarray(fit_predict(train, val, every), dtype=np.float64)


def extrapolate_stage(cfg: DictConfig) -> dict[str, Any]:
    """Run the extrapolation test for every configured dataset × method; write the report."""
    root = project_root()
    xc = cfg.evaluation.extrapolation
    k_values = [int(k) for k in xc.k]
    plots = root / cfg.paths.plots_dir / "extrapolation"
    plots.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    lines = [
        f"Train on κ below the {float(xc.quantile):.0%} quantile (grouped by formula); rank "
        "every compound. recall@k: share of the k truly highest-κ compounds among the k "
        "predicted highest (all compounds ranked, held-out ones unseen); ρ: Spearman within "
        "the held-out high-κ compounds.",
        "",
        "| dataset | method | n train | n held out | "
        + " | ".join(f"recall@{k}" for k in k_values)
        + " | ρ held out | share predicted above train max |",
        "|---|---|---|---|" + "---|" * len(k_values) + "---|---|",
    ]
    stage = "extrapolate"
    aliases = cfg.tracking.get("aliases")
    with start_stage_run(
        cfg, stage, run_name=stage, dvc_stage=stage, params=["evaluation.extrapolation", "seed"]
    ) as run:
        for dataset in xc.datasets:
            table, _ = kappa_table(cfg, dataset)
            kappa = table["kappa"].to_numpy(dtype=np.float64)
            train_rows, held_rows = extrapolation_split(
                kappa, float(xc.quantile), groups=material_keys(table).to_numpy()
            )
            threshold = float(np.quantile(kappa, float(xc.quantile)))
            high = held_rows[kappa[held_rows] >= threshold]
            preds: dict[str, np.ndarray] = {}
            for method in xc.methods:
                pred = extrapolation_predictions(cfg, str(method), dataset, table, train_rows)
                preds[str(method)] = pred
                m = extrapolation_metrics(
                    kappa[high],
                    pred[high],
                    pred[train_rows],
                    k_values,
                    kappa_true_train=kappa[train_rows],
                )
                results[f"{method}/{dataset}"] = m
                log.info("extrapolate %s on %s: %s", method, dataset, m)
                recall = " | ".join(f"{m[f'recall@{k}']:.2f}" for k in k_values)
                lines.append(
                    f"| {dataset} | {method} | {int(m['n_train'])} | {int(m['n_heldout'])} | "
                    f"{recall} | {m['spearman_heldout']:.2f} | {m['frac_above_train_max']:.2f} |"
                )
            extrapolation_plot(
                kappa, preds, high, threshold, plots / f"rank_{dataset}.png", title=dataset
            )
        report = write_report(
            root / cfg.paths.reports_dir / "extrapolation.md",
            "\n".join(lines),
            title="Extrapolation to high κ (Ju et al. 2021 protocol)",
        )
        write_metrics(
            root / cfg.paths.metrics_dir / "headline" / "extrapolation.json",
            {
                key: {
                    "spearman_heldout": m.get("spearman_heldout"),
                    f"recall@{k_values[0]}": m.get(f"recall@{k_values[0]}"),
                }
                for key, m in results.items()
            },
        )
        finish_study(
            run,
            report,
            root / cfg.paths.metrics_dir / "extrapolation.json",
            results,
            sorted(plots.glob("*.png")),
            "extrapolation",
            mlflow_metrics=(
                (
                    {
                        f"{_metric_prefix(key, aliases)}_{name.replace('@', '_at_')}": float(v)
                        for name, v in m.items()
                        if np.isfinite(v) and not is_count(name)
                    },
                    None,
                )
                for key, m in results.items()
            ),
        )
    return results


def _metric_prefix(key: str, aliases: Any) -> str:
    """``<method>/<dataset>`` → ``<dataset alias>_<method>`` (MLflow names have no slashes)."""
    method, dataset = key.split("/", 1)
    return f"{dataset_alias(dataset, aliases)}_{method}"


def main() -> None:
    """Run the DVC stage ``extrapolate`` from the command line: ``pipelines/extrapolate.py``.

    Usage: ``python pipelines/extrapolate.py [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`extrapolate_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(extrapolate_stage)
