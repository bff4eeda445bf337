"""DVC stage ``domain``: measure whether the out-of-domain flag catches off-family misses.

Reads ``evaluation.domain`` (datasets, hold-out kinds, methods, thresholds), the dataset cards,
``transfer`` (recipes of the strategies named in ``methods``), ``models``, ``trainer``, ``seed``.
For each dataset and hold-out kind (structure family; anion) every group with at least
``min_group_size`` rows is held out in turn: each method (a transfer strategy, or the
``magpie_rf`` baseline) is trained on the other rows (early stopping on a grouped inner
validation part of them) and predicts κ (W/m/K) for the held-out group; the candidate signals
(:mod:`kappaflow.evaluation.domain`) are scored against its errors.

Outputs: ``reports/domain.md`` (per method: recall of > 3× misses and false rejection of
within-2× hits for every signal combination, pooled and per group; each method's held-out
log10-MAE per group: how wrong it is off its training families), ``metrics/domain.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.data.leakage import material_keys
from kappaflow.data.splits import inner_validation_split
from kappaflow.evaluation.domain import (
    COMBINATIONS,
    combine,
    flag_quality,
    group_labels,
    holdout_signals,
)
from kappaflow.evaluation.protocol import BASELINES, dataset_evaluation
from kappaflow.evaluation.report import write_report
from kappaflow.features.composition import magpie_features
from kappaflow.layout import kappa_table, project_root
from kappaflow.stages.common import finish_study
from kappaflow.tracking import start_stage_run
from kappaflow.transfer.fit_predict import build_fit_predict, fold_cache_dir, with_strategy

log = logging.getLogger(__name__)

#: Methods that are baselines rather than transfer strategies.
BASELINE_METHODS = ("magpie_rf",)


def holdout_predictions(
    cfg: DictConfig, method: str, dataset: str, table: pd.DataFrame, kind: str
) -> pd.DataFrame:
    """Train ``method`` without each group of ``kind`` and predict that group (W/m/K).

    Returns:
        One row per held-out row of every group: ``group, row, kappa_true, kappa_pred`` plus the
        signals of :func:`~kappaflow.evaluation.domain.holdout_signals`.
    """
    dcfg = cfg.evaluation.domain
    ev = dataset_evaluation(cfg.evaluation, dataset)
    labels = group_labels(table, kind)
    keys = material_keys(table).to_numpy()
    features = magpie_features(table.formula.astype(str).tolist())
    if method in BASELINE_METHODS:
        fit_predict = BASELINES["magpie_rf"](table, int(cfg.seed))
    else:
        s_cfg = with_strategy(cfg, method)
        work = fold_cache_dir(s_cfg, method, dataset)
        fit_predict = build_fit_predict(
            s_cfg, method, dataset, table, work.with_name(f"{work.name}-domain-{kind}")
        )
    frames = []
    counts = labels.value_counts()
    for group in sorted(counts.index[counts >= int(dcfg.min_group_size)]):
        test = np.flatnonzero(labels.to_numpy() == group)
        rest = np.flatnonzero(labels.to_numpy() != group)
        if len(rest) < int(dcfg.min_group_size):
            continue
        train, val = inner_validation_split(rest, keys, float(ev.val_fraction), int(cfg.seed))
        pred = np.asarray(fit_predict(train, val, test), dtype=np.float64)
        signals = holdout_signals(
            table, rest, test, features, float(dcfg.quantile), keys, int(cfg.seed)
        )
        frames.append(
            signals.assign(
                group=group,
                row=test,
                kappa_true=table.kappa.to_numpy()[test],
                kappa_pred=pred,
            )
        )
        log.info(
            "domain %s %s on %s: held out %s (%d rows)", method, kind, dataset, group, len(test)
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _quality(rows: pd.DataFrame, dcfg: DictConfig) -> pd.DataFrame:
    err = np.abs(np.log10(rows.kappa_pred) - np.log10(rows.kappa_true)).to_numpy()
    flags = {
        name: combine(rows, parts)
        for name, parts in COMBINATIONS.items()
        if all(p in rows.columns for p in parts)
    }
    return flag_quality(err, flags, float(dcfg.miss_factor), float(dcfg.hit_factor))


def _table(q: pd.DataFrame) -> str:
    head = (
        "| signal | misses caught | recall | hits rejected | false reject |\n|---|---|---|---|---|"
    )
    lines = [
        f"| {r.signal} | {r.caught}/{r.n_miss} | {100 * r.recall:.0f} % | {r.rejected}/{r.n_hit} | "
        f"{100 * r.false_reject:.0f} % |"
        for r in q.itertuples()
    ]
    return (head + "\n" + "\n".join(lines)).replace("nan %", "–")


def error_by_group(per_method: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Held-out error of each method on each held-out group, and pooled over the groups.

    Args:
        per_method: method -> its :func:`holdout_predictions` rows (same groups and rows for
            every method: one table, one grouping).

    Returns:
        One row per group (then ``all``): ``group``, ``n`` and, per method, ``<method>``
        (log10-MAE, decades of κ in W/m/K) and ``<method> within 2x`` (fraction).
    """
    out: dict[str, dict[str, Any]] = {}
    for method, rows in per_method.items():
        err = np.abs(np.log10(rows.kappa_pred) - np.log10(rows.kappa_true))
        parts = [*rows.groupby("group"), ("all", rows)]
        for group, part in parts:
            e = err.loc[part.index]
            row = out.setdefault(str(group), {"group": str(group), "n": len(part)})
            row[method] = float(e.mean())
            row[f"{method} within 2x"] = float((e <= np.log10(2.0) + 1e-12).mean())
    return pd.DataFrame(list(out.values()))


def _error_table(errors: pd.DataFrame, methods: list[str]) -> str:
    head = "| held-out group | n | " + " | ".join(methods) + " |"
    lines = [head, "|---|---|" + "---|" * len(methods)]
    for r in errors.to_dict("records"):
        cells = [f"{r[m]:.3f} ({100 * r[f'{m} within 2x']:.0f} %)" for m in methods]
        name = "**all held-out rows**" if r["group"] == "all" else r["group"]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def domain_stage(cfg: DictConfig) -> dict[str, Any]:
    """Run the hold-out measurement of the domain signals; write the report and metrics."""
    dcfg = cfg.evaluation.domain
    root = project_root()
    sections: list[str] = [
        "Held-out rows only. A miss is off by more than "
        f"{float(dcfg.miss_factor):g}×, a hit within {float(dcfg.hit_factor):g}×; recall = share "
        "of misses a signal flags (target ≥ 80 %), false reject = share of hits it flags "
        "(target ≤ 20 %). Descriptor distance: nearest training compound in standardized "
        f"Magpie space above the {float(dcfg.quantile):g} quantile of the training set's own "
        "nearest-neighbour distances."
    ]
    metrics: dict[str, Any] = {}
    with start_stage_run(
        cfg, "domain", run_name="domain", dvc_stage="domain", purpose="transfer"
    ) as run:
        for dataset in dcfg.datasets:
            table, _ = kappa_table(cfg, dataset)
            for kind in dcfg.holdouts:
                per_method: dict[str, pd.DataFrame] = {}
                for method in dcfg.methods:
                    rows = holdout_predictions(cfg, str(method), dataset, table, str(kind))
                    if rows.empty:
                        continue
                    per_method[str(method)] = rows
                    q = _quality(rows, dcfg)
                    groups = ", ".join(f"{g} ({n})" for g, n in rows.group.value_counts().items())
                    sections += [
                        f"## {method} on {dataset}, leave one {kind} out",
                        f"Groups held out: {groups}.",
                        _table(q),
                    ]
                    for r in q.itertuples():
                        key = f"{method}/{dataset}/{kind}/{r.signal}"
                        metrics[key] = {"recall": r.recall, "false_reject": r.false_reject}
                if per_method:  # how wrong each method is off its training groups
                    errors = error_by_group(per_method)
                    sections += [
                        f"## Held-out error on {dataset}, leave one {kind} out",
                        "log10-MAE (share within 2×) of each method on the rows of a group it "
                        "never saw, trained on every other group (same rows for every method).",
                        _error_table(errors, list(per_method)),
                    ]
                    pooled = errors[errors.group == "all"].iloc[0]
                    for method in per_method:
                        metrics[f"{method}/{dataset}/{kind}/heldout"] = {
                            "log10_mae": float(pooled[method]),
                            "within_2x": float(pooled[f"{method} within 2x"]),
                        }
        report = write_report(root / "reports" / "domain.md", *sections, title="Domain flag")
        metrics_path = root / cfg.paths.metrics_dir / "domain.json"
        finish_study(run, report, metrics_path, metrics, [], "domain")
    return metrics


def main() -> None:
    """Run the DVC stage ``domain`` from the command line: ``pipelines/domain.py``.

    Usage: ``python pipelines/domain.py [key=value ...]``.
    """
    from kappaflow.stages.common import run_stage

    run_stage(domain_stage)
