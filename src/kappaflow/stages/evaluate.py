"""The ``evaluate`` stage: baselines on the same folds, the transfer table, plots, metrics.

Reads every ``models/finetune/<strategy>/<dataset>/cv.json`` (written by the ``finetune`` stage),
runs the trivial and composition baselines (median of log10 κ; random forest and extremely
randomized trees on Magpie features) through the very same repeated grouped k-fold, and writes:

* ``reports/transfer.md``: rows = strategy × training set, columns = test set (the held-out folds
  of the same set), MAPE % and log10-MAE mean ± std; ParAIsite's published numbers quoted beside,
  flagged as not comparable (in-sample, not grouped CV);
* ``metrics/transfer.json``: every number of the table (a plain DVC out; ``register`` reads it);
* ``metrics/headline/transfer.json``: log10-MAE mean/std per strategy × dataset and the best
  baseline's (the DVC metrics, :func:`transfer_headline`);
* ``plots/transfer/``: strategy comparison (log10-MAE; ``strategy_log10_mae.csv``, a DVC plot that
  diffs across experiments), out-of-fold parity plots (``parity_<dataset>.csv``: κ true/predicted,
  W/m/K, one row per prediction and strategy, DVC's ``kappa_parity`` template) and PNGs;
* ``models/baselines/<baseline>/<dataset>/``: the baselines' ``cv.json`` (per-fold metrics) and
  ``predictions.csv``, in the ``finetune`` stage's format, so that every claim of improvement
  (the report's, the ``register`` gate's) is a paired difference on the same folds
  (:mod:`kappaflow.evaluation.paired`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.evaluation.calibration import (
    LEVELS,
    cross_conformal_coverage,
    reliability_curve,
)
from kappaflow.evaluation.families import families_of, family_error_section
from kappaflow.evaluation.paired import PairedComparison, paired_comparison
from kappaflow.evaluation.plots import (
    parity_data,
    parity_plot,
    reliability_plot,
    strategy_comparison_data,
    strategy_comparison_plot,
)
from kappaflow.evaluation.protocol import (
    BASELINES,
    cross_validate,
    dataset_evaluation,
    protocol_settings,
)
from kappaflow.evaluation.report import published_table, transfer_table, write_report
from kappaflow.io_utils import write_json, write_metrics
from kappaflow.layout import baseline_dir, kappa_table, project_root
from kappaflow.stages.common import finish_study
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias, finite_metrics

log = logging.getLogger(__name__)

#: The per strategy × dataset numbers the ``evaluate`` run logs (:func:`headline_mlflow_metrics`).
HEADLINE_KEYS = (
    "log10_mae_mean", "log10_mae_std", "mape_mean", "spearman_mean", "within_2x_mean"
)  # fmt: skip


def evaluate_stage(cfg: DictConfig) -> dict[str, Any]:
    """Assemble the transfer report from the fine-tuning CV results and the baselines."""
    root = project_root()
    ev = cfg.evaluation
    plots = root / cfg.paths.plots_dir / "transfer"
    plots.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    cv_records: dict[tuple[str, str], dict[str, Any]] = {}
    oof: dict[tuple[str, str], pd.DataFrame] = {}  # out-of-fold predictions, for calibration
    for dataset in ev.datasets:
        table, _ = kappa_table(cfg, dataset)
        for name in ev.baselines:
            if name not in BASELINES:
                raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
            result = cross_validate(
                table,
                BASELINES[name](table, int(cfg.seed)),
                **protocol_settings(dataset_evaluation(ev, dataset)),
                progress=False,
            )
            record = {"strategy": f"baseline:{name}", "dataset": dataset, **result.to_dict()}
            cv_records[(f"baseline:{name}", dataset)] = record
            out = baseline_dir(cfg, name, dataset)
            write_json(out / "cv.json", record)
            result.predictions.to_csv(out / "predictions.csv", index=False)
            oof[(f"baseline:{name}", dataset)] = result.predictions
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
            cv_records[(strategy, dataset)] = cv
            summary = {k: (float("nan") if v is None else v) for k, v in cv["summary"].items()}
            rows.append(
                {"strategy": strategy, "train_set": dataset, "test_set": dataset, **summary}
            )
            preds = pd.read_csv(path.parent / "predictions.csv", keep_default_na=False)
            oof[(strategy, dataset)] = preds
            parity_plot(
                preds["kappa_true"],
                preds["kappa_pred"],
                plots / f"parity_{strategy}_{dataset}.png",
                title=f"{strategy} on {dataset} (out-of-fold)",
            )
    results = pd.DataFrame(rows)
    for dataset in ev.datasets:
        parity_data(
            {s: p for (s, d), p in oof.items() if d == dataset and not s.startswith("baseline:")},
            plots / f"parity_{dataset}.csv",
        )
    strategy_comparison_data(results, plots / "strategy_log10_mae.csv")
    strategy_comparison_plot(
        results.rename(columns={"train_set": "dataset"}),
        plots / "strategy_comparison.png",
        metric="log10_mae",
    )
    tl_vs_scratch = _paired_lines(cv_records, results, reference="scratch")
    vs_baseline = _paired_lines(cv_records, results, reference=None)
    published = OmegaConf.to_container(ev.published, resolve=True)
    sections = [
        "## Held-out results (repeated grouped k-fold)",
        transfer_table(results, metrics=("log10_mae", "mape", "spearman", "within_2x")),
        "## Does a strategy beat the best baseline? (paired log10-MAE on the same folds)",
        "Δ = strategy − best baseline of that set (lower is better), ± its corrected standard "
        'error (Nadeau & Bengio), one-sided p of "the strategy is better"; a strategy '
        "*beats* the baseline when Δ < 0 and p < 0.05.",
        _markdown_list(vs_baseline),
        "## Validation rows: what chooses the registered strategy",
        "log10-MAE on each fold's validation rows (carved out of its training part), mean ± std "
        "over folds, best first; `register` takes the best transferred strategy by this, never "
        "by the test folds above. Optimistic for a network that early-stopped on those rows.",
        _markdown_list(selection_lines(cv_records)) or "(no validation-row scores recorded)",
        "## Does transfer beat training from scratch? (paired log10-MAE on the same folds)",
        _markdown_list(tl_vs_scratch),
        "## Out-of-fold error per structure family",
        "log10-MAE (share within 2×) over every out-of-fold prediction of all repeats; n = "
        "compounds of the family in the set. The κ sets are mostly four prototypes: a model's "
        "error on `other` is the closest these sets come to crystals off the training families.",
    ]
    for dataset in ev.datasets:
        table, _ = kappa_table(cfg, dataset)
        sections.append(
            family_error_section(
                {s: p for (s, d), p in oof.items() if d == dataset},
                families_of(table),
                f"**{dataset}**",
            )
        )
    calibration, curves = _calibration(oof)
    sections += [
        "## Calibrated κ intervals (conformal, measured on held-out folds)",
        "Interval = κ̂ ×/÷ 10^q, q = conformal quantile of the |log10 residuals| of the other "
        "folds (a fold never calibrates itself); target: measured coverage within ±5 points "
        "of nominal. Factor = 10^q, mean over folds.",
        _calibration_table(calibration),
    ]
    for dataset in ev.datasets:
        ds_curves = {s: c for (s, d), c in curves.items() if d == dataset}
        if ds_curves:
            reliability_plot(ds_curves, plots / f"reliability_{dataset}.png", title=dataset)
    reliability = pd.concat(
        [c.assign(strategy=s, dataset=d) for (s, d), c in curves.items()], ignore_index=True
    )
    reliability.to_csv(plots / "reliability.csv", index=False)
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
    for (strategy, dataset), table in calibration.items():
        for _, c in table.iterrows():
            level = round(100 * c["nominal"])
            metrics[f"{strategy}/{dataset}"][f"coverage{level}"] = float(c["coverage"])
            metrics[f"{strategy}/{dataset}"][f"interval{level}_factor"] = float(c["factor"])
    write_metrics(
        root / cfg.paths.metrics_dir / "headline" / "transfer.json", transfer_headline(rows)
    )
    with start_stage_run(
        cfg,
        "evaluate",
        run_name="evaluate",
        dvc_stage="evaluate",
        params=["evaluation", "transfer.strategies", "seed"],
        drop_params=["evaluation.published", "evaluation.extrapolation", "evaluation.domain"],
    ) as run:
        report = finish_study(
            run,
            write_report(root / str(ev.report), *sections, title="kappaflow transfer report"),
            root / cfg.paths.metrics_dir / "transfer.json",
            metrics,
            sorted(plots.glob("*.png")),
            "report",
            mlflow_metrics=[(headline_mlflow_metrics(rows, cfg.tracking.get("aliases")), None)],
        )
    log.info("evaluate: %d result rows, report %s", len(rows), report)
    return metrics


def transfer_headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the DVC metrics of ``evaluate``: log10-MAE (log10 W/m/K) per model × set.

    Args:
        rows: result rows (``strategy``, ``train_set``, ``log10_mae_mean``, ``log10_mae_std``...);
            baselines are named ``baseline:<name>``.

    Returns:
        ``{strategy: {dataset: {log10_mae_mean, log10_mae_std}}}`` for every transfer strategy and
        ``{"best_baseline": {dataset: log10_mae_mean}}`` (the lowest baseline mean of the set).
    """
    out: dict[str, Any] = {}
    best: dict[str, float] = {}
    for r in rows:
        strategy, dataset = str(r["strategy"]), str(r["train_set"])
        mean, std = r.get("log10_mae_mean"), r.get("log10_mae_std")
        if strategy.startswith("baseline:"):
            if mean is not None and mean == mean and mean < best.get(dataset, float("inf")):
                best[dataset] = float(mean)
            continue
        out.setdefault(strategy, {})[dataset] = {"log10_mae_mean": mean, "log10_mae_std": std}
    out["best_baseline"] = best
    return out


def headline_mlflow_metrics(rows: list[dict[str, Any]], aliases: Any = None) -> dict[str, float]:
    """Name the ``evaluate`` run's metrics: each strategy × dataset headline, one flat name.

    Names ``<dataset alias>_<strategy>_<metric>`` (baselines ``baseline_<name>``), e.g.
    ``D1_finetune_log10_mae_mean`` (log10 W/m/K, dimensionless), ``D1_finetune_mape_mean`` (%),
    ``D1_finetune_spearman_mean``, so MLflow's chart and compare views plot them side by side.

    Args:
        rows: result rows (``strategy``, ``train_set``, ``<metric>_mean``/``_std``).
        aliases: ``tracking.aliases`` (short dataset names).

    Returns:
        Finite values of :data:`HEADLINE_KEYS` only.
    """
    out: dict[str, float] = {}
    for r in rows:
        strategy = str(r["strategy"]).replace("baseline:", "baseline_")
        prefix = f"{dataset_alias(str(r['train_set']), aliases)}_{strategy}_"
        out.update(finite_metrics({k: r[k] for k in HEADLINE_KEYS if k in r}, prefix=prefix))
    return out


def _calibration(
    oof: dict[tuple[str, str], pd.DataFrame],
) -> tuple[dict[tuple[str, str], pd.DataFrame], dict[tuple[str, str], pd.DataFrame]]:
    """Held-out coverage at 68/95 % and the reliability curve of every model's OOF predictions."""
    tables, curves = {}, {}
    for key, preds in oof.items():
        if preds.empty:
            continue
        tables[key] = cross_conformal_coverage(preds)
        curves[key] = reliability_curve(preds)
    return tables, curves


def _calibration_table(tables: dict[tuple[str, str], pd.DataFrame]) -> str:
    head = (
        "| model | dataset | n | 68 %: coverage | 68 %: factor | 95 %: coverage | 95 %: factor |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = []
    for (strategy, dataset), table in tables.items():
        t = table.set_index("nominal")
        cells = [
            f"{100 * t.loc[c, 'coverage']:.0f} % ± {100 * t.loc[c, 'coverage_std']:.0f} | "
            f"×/÷ {t.loc[c, 'factor']:.2f}"
            for c in LEVELS
        ]
        n = int(t["n"].iloc[0])
        lines.append(f"| {strategy} | {dataset} | {n} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(lines)


def _paired_lines(
    cv_records: dict[tuple[str, str], dict[str, Any]],
    results: pd.DataFrame,
    reference: str | None,
) -> list[str]:
    """One line per (strategy, dataset): paired log10-MAE difference against ``reference``.

    ``reference=None`` compares with the best baseline of the dataset (lowest mean log10-MAE);
    ``"scratch"`` compares transfer strategies with training from scratch.
    """
    lines = []
    for dataset in dict.fromkeys(results.train_set):
        sub = results[results.train_set == dataset]
        if reference is None:
            base = sub[sub.strategy.astype(str).str.startswith("baseline:")]
            if base.empty:
                continue
            ref = str(base.sort_values("log10_mae_mean").iloc[0].strategy)
        else:
            ref = reference
        if (ref, dataset) not in cv_records:
            continue
        for strategy in sub.strategy:
            if strategy == ref or str(strategy).startswith("baseline:"):
                continue
            if reference == "scratch" and strategy == "scratch":
                continue
            cmp = paired_comparison(cv_records[(strategy, dataset)], cv_records[(ref, dataset)])
            lines.append(f"{strategy} on {dataset}: {_verdict(cmp, ref)}")
    return lines or ["(nothing to compare with)"]


def _verdict(cmp: PairedComparison, ref: str, alpha: float = 0.05) -> str:
    verdict = "**beats**" if cmp.beats(alpha) else "does not beat"
    return (
        f"{cmp.candidate_mean:.3f} vs {ref} {cmp.reference_mean:.3f}: {cmp.text()} → "
        f"{verdict} {ref}"
    )


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


def selection_lines(cv_records: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """One line per (dataset, strategy) with its validation-row log10-MAE, best first.

    The score ``register`` chooses its candidate by (cv.json ``selection``: each fold's
    validation rows, carved out of its training part; never its test rows). Baselines and
    cv.json records without the score are not listed.
    """
    by_dataset: dict[str, list[tuple[float, str]]] = {}
    for (strategy, dataset), cv in cv_records.items():
        sel = cv.get("selection") or {}
        if strategy.startswith("baseline:") or "val_log10_mae_mean" not in sel:
            continue
        line = (
            f"{strategy}: {sel['val_log10_mae_mean']:.4f} ± {sel.get('val_log10_mae_std', 0):.4f}"
            f" ({int(sel.get('n_val_rows', 0))} validation rows)"
        )
        by_dataset.setdefault(dataset, []).append((float(sel["val_log10_mae_mean"]), line))
    return [
        f"**{dataset}**: " + "; ".join(line for _, line in sorted(items))
        for dataset, items in by_dataset.items()
    ]


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
