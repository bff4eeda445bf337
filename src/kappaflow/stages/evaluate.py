"""The ``evaluate`` stage: baselines on the same folds, the transfer table, plots, metrics.

Reads every ``models/finetune/<strategy>/<dataset>/cv.json`` (written by the ``finetune`` stage),
runs the trivial and composition baselines (median of log10 κ; random forest on Magpie features)
through the very same repeated grouped k-fold, and writes:

* ``reports/transfer.md``: rows = strategy × training set, columns = test set (the held-out folds
  of the same set), MAPE % and log10-MAE mean ± std; ParAIsite's published numbers quoted beside,
  flagged as not comparable (in-sample, not grouped CV);
* ``metrics/transfer.json``: every number of the table (``dvc metrics show``);
* ``plots/transfer/``: strategy comparison (log10-MAE) and out-of-fold parity plots.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.evaluation.plots import parity_plot, strategy_comparison_plot
from kappaflow.evaluation.protocol import (
    cross_validate,
    dataset_evaluation,
    magpie_rf_fit_predict,
    median_fit_predict,
    protocol_settings,
)
from kappaflow.evaluation.report import published_table, transfer_table, write_report
from kappaflow.layout import kappa_table, project_root
from kappaflow.stages.common import finish_study
from kappaflow.tracking import start_stage_run

log = logging.getLogger(__name__)


def evaluate_stage(cfg: DictConfig) -> dict[str, Any]:
    """Assemble the transfer report from the fine-tuning CV results and the baselines."""
    root = project_root()
    ev = cfg.evaluation
    plots = root / cfg.paths.plots_dir / "transfer"
    plots.mkdir(parents=True, exist_ok=True)
    baselines = {
        "median": lambda t: median_fit_predict(t),
        "magpie_rf": lambda t: magpie_rf_fit_predict(t, seed=int(cfg.seed)),
    }
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for dataset in ev.datasets:
        table, _ = kappa_table(cfg, dataset)
        for name in ev.baselines:
            if name not in baselines:
                raise KeyError(f"unknown baseline {name!r}; known: {sorted(baselines)}")
            result = cross_validate(
                table,
                baselines[name](table),
                **protocol_settings(dataset_evaluation(ev, dataset)),
                progress=False,
            )
            rows.append(
                {
                    "strategy": f"baseline:{name}",
                    "train_set": dataset,
                    "test_set": dataset,
                    **result.summary,
                }
            )
        for strategy in cfg.transfer.strategies:
            path = root / cfg.paths.models_dir / "finetune" / strategy / dataset / "cv.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: run `dvc repro finetune`")
            cv = json.loads(path.read_text())
            if "skipped" in cv:
                skipped.append(f"{strategy} on {dataset}: {cv['skipped']}")
                continue
            summary = {k: (float("nan") if v is None else v) for k, v in cv["summary"].items()}
            rows.append(
                {"strategy": strategy, "train_set": dataset, "test_set": dataset, **summary}
            )
            preds = pd.read_csv(path.parent / "predictions.csv", keep_default_na=False)
            parity_plot(
                preds["kappa_true"],
                preds["kappa_pred"],
                plots / f"parity_{strategy}_{dataset}.png",
                title=f"{strategy} on {dataset} (out-of-fold)",
            )
    results = pd.DataFrame(rows)
    strategy_comparison_plot(
        results.rename(columns={"train_set": "dataset"}),
        plots / "strategy_comparison.png",
        metric="log10_mae",
    )
    tl_vs_scratch = _tl_vs_scratch(results)
    published = OmegaConf.to_container(ev.published, resolve=True)
    sections = [
        "## Held-out results (repeated grouped k-fold)",
        transfer_table(results),
        "## Does transfer beat training from scratch? (log10-MAE, lower is better)",
        _markdown_list(tl_vs_scratch),
    ]
    if skipped:
        sections += ["## Not run", _markdown_list(skipped)]
    other = _other_targets(cfg, root)
    if other:
        sections += [
            "## Non-κ transfer check (TL-CGCNN: refractive index n, same code, same protocol)",
            other,
        ]
    sections += [
        "## Published numbers (context only)",
        published_table((published or {}).get("paraisite")),
    ]
    metrics = {
        f"{r['strategy']}/{r['train_set']}": {k: r[k] for k in r if k.endswith(("_mean", "_std"))}
        for r in rows
    }
    with start_stage_run(cfg, "evaluate", run_name="evaluate", dvc_stage="evaluate") as run:
        report = finish_study(
            run,
            write_report(root / str(ev.report), *sections, title="kappaflow transfer report"),
            root / cfg.paths.metrics_dir / "transfer.json",
            metrics,
            sorted(plots.glob("*.png")),
            "report",
        )
    log.info("evaluate: %d result rows, report %s", len(rows), report)
    return metrics


def _tl_vs_scratch(results: pd.DataFrame) -> list[str]:
    """One line per (transfer strategy, dataset): its log10-MAE vs ``scratch`` on the same folds."""
    lines = []
    scratch = results[results.strategy == "scratch"].set_index("train_set")
    for _, r in results.iterrows():
        if r.strategy in ("scratch",) or str(r.strategy).startswith("baseline:"):
            continue
        if r.train_set not in scratch.index:
            continue
        s = scratch.loc[r.train_set]
        delta = r.log10_mae_mean - s.log10_mae_mean
        verdict = "beats" if delta < 0 else "does not beat"
        lines.append(
            f"{r.strategy} on {r.train_set}: {r.log10_mae_mean:.3f} ± {r.log10_mae_std:.3f} vs "
            f"scratch {s.log10_mae_mean:.3f} ± {s.log10_mae_std:.3f} → {verdict} scratch "
            f"(Δ = {delta:+.3f})"
        )
    return lines or ["(no scratch run to compare with)"]


def _other_targets(cfg: DictConfig, root: Any) -> str:
    """Markdown table of ``finetune_other`` results (non-κ targets): scratch vs transfer."""
    ev = cfg.evaluation
    rows = []
    for dataset in ev.get("other_targets") or []:
        for strategy in ev.get("other_target_strategies") or []:
            path = root / cfg.paths.models_dir / "finetune" / strategy / dataset / "cv.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: run `dvc repro finetune_other`")
            s = json.loads(path.read_text())["summary"]
            rows.append(
                f"| {dataset} | {strategy} | {s['n_folds']:.0f} | {s['mae_mean']:.3f} ± "
                f"{s['mae_std']:.3f} | {s['log10_mae_mean']:.4f} ± {s['log10_mae_std']:.4f} | "
                f"{s['log10_r2_mean']:.3f} | {s['spearman_mean']:.3f} |"
            )
    if not rows:
        return ""
    head = (
        "| dataset | strategy | folds | MAE (target units) | log10-MAE | R² (log10) "
        "| Spearman ρ |\n"
        "|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


def _markdown_list(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def main() -> None:
    """Run the DVC stage ``evaluate`` from the command line: ``pipelines/evaluate.py``.

    Usage: ``python pipelines/evaluate.py [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`evaluate_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(evaluate_stage)
