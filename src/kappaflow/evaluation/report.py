"""Markdown transfer-learning report (``reports/transfer.md``).

:func:`transfer_table` lays out cross-validated results like the ParAIsite README table: rows are
strategy × training set, columns are test sets, each cell ``MAPE mean ± std % / log10-MAE mean ±
std``. :func:`published_table` quotes published numbers in the same layout, explicitly flagged
as not comparable. :func:`write_report` writes the document atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kappaflow.io_utils import write_text

PathLike = str | os.PathLike[str]

#: Flag printed above every quoted published table.
NOT_COMPARABLE = (
    "in-sample / not comparable (their evaluation is not a held-out grouped CV: no material "
    "grouping, and cross-dataset cells such as MIX contain the training materials)"
)
#: metric -> (label, scale, decimals, unit) for table cells.
METRIC_FORMATS: dict[str, tuple[str, float, int, str]] = {
    "mape": ("MAPE", 1.0, 1, " %"),
    "log10_mae": ("log10-MAE", 1.0, 3, ""),
    "log10_rmse": ("log10-RMSE", 1.0, 3, ""),
    "spearman": ("Spearman", 1.0, 2, ""),
    "mae": ("MAE", 1.0, 2, " W/m/K"),
    "within_2x": ("within 2×", 1.0, 0, " %"),
}
EMPTY_CELL = "—"


def _fmt(mean: Any, std: Any, decimals: int, unit: str, scale: float = 1.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return EMPTY_CELL
    text = f"{float(mean) * scale:.{decimals}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {float(std) * scale:.{decimals}f}"
    return text + unit


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def transfer_table(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("mape", "log10_mae"),
    test_sets: Sequence[str] | None = None,
) -> str:
    """Render cross-validated transfer results as a markdown table.

    Args:
        results: one row per (strategy, train_set, test_set) with columns ``strategy``,
            ``train_set``, ``test_set`` and ``<metric>_mean`` / ``<metric>_std`` for every
            metric (as from :func:`~kappaflow.evaluation.metrics.aggregate_folds`; MAPE in %,
            log10-MAE in decades). Missing combinations render as ``—``.
        metrics: metrics shown in each cell, separated by `` / `` (see :data:`METRIC_FORMATS`).
        test_sets: column order; default order of first appearance.

    Returns:
        Markdown: a one-line legend and the table (rows in order of first appearance).

    Raises:
        ValueError: missing columns or duplicated (strategy, train_set, test_set) rows.
    """
    need = ["strategy", "train_set", "test_set"]
    need += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ValueError(f"results lack column(s) {missing}")
    keys = ["strategy", "train_set", "test_set"]
    if results.duplicated(keys).any():
        raise ValueError("duplicated (strategy, train_set, test_set) rows in results")
    cols = list(test_sets) if test_sets is not None else list(dict.fromkeys(results["test_set"]))
    row_keys = list(dict.fromkeys(zip(results["strategy"], results["train_set"], strict=True)))
    lookup = {tuple(r[k] for k in keys): r for _, r in results.iterrows()}
    body = []
    for strategy, train_set in row_keys:
        cells = []
        for test_set in cols:
            rec = lookup.get((strategy, train_set, test_set))
            if rec is None:
                cells.append(EMPTY_CELL)
                continue
            parts = []
            for m in metrics:
                _, scale, dec, unit = METRIC_FORMATS.get(m, (m, 1.0, 3, ""))
                parts.append(_fmt(rec[f"{m}_mean"], rec[f"{m}_std"], dec, unit, scale))
            cells.append(" / ".join(parts))
        body.append([str(strategy), str(train_set), *cells])
    legend = (
        "Cells: "
        + " / ".join(METRIC_FORMATS.get(m, (m,))[0] for m in metrics)
        + ", mean ± std over the folds of a repeated grouped (by material) k-fold CV; "
        "rows = strategy × training set, columns = test set."
    )
    return legend + "\n\n" + _markdown(["strategy", "train set", *map(str, cols)], body)


def published_table(published: Mapping[str, Any] | None, name: str = "ParAIsite") -> str:
    """Quote published numbers in the transfer-table layout, flagged as not comparable.

    Args:
        published: the ``published.<name>`` config node: ``source`` (text), ``metric`` (
            ``"mape_fraction"`` = sklearn MAPE as a fraction, rendered in %), ``note``
            (optional) and ``results``: ``{step: {train_set: {test_set: [mean, std]}}}``.
            None or without ``results`` renders a "not found" note.
        name: the work quoted.

    Returns:
        Markdown: heading line with the :data:`NOT_COMPARABLE` flag, source, and the table.
    """
    head = f"**{name} published numbers: {NOT_COMPARABLE}.**"
    if not published or not published.get("results"):
        return head + f"\n\n{name} published numbers: not found."
    metric = str(published.get("metric", "mape_fraction"))
    scale, unit, label = (100.0, " %", "MAPE") if metric == "mape_fraction" else (1.0, "", metric)
    results: Mapping[str, Any] = published["results"]
    cols: list[str] = []
    for per_train in results.values():
        for per_test in per_train.values():
            cols += [c for c in per_test if c not in cols]
    body = []
    for step, per_train in results.items():
        for train_set, per_test in per_train.items():
            cells = []
            for c in cols:
                value = per_test.get(c)
                if value is None:
                    cells.append(EMPTY_CELL)
                else:
                    mean, std = (list(value) + [None])[:2]
                    cells.append(_fmt(mean, std, 0, unit, scale))
            body.append([str(step), str(train_set), *cells])
    lines = [head, "", f"Source: {published.get('source', 'unknown')}. Cells: {label} as published"]
    lines[-1] += " (value in parentheses there shown after ±)."
    if published.get("note"):
        lines += ["", str(published["note"])]
    return "\n".join(lines) + "\n\n" + _markdown(["step (published)", "train set", *cols], body)


def write_report(path: PathLike, *sections: str, title: str | None = None) -> Path:
    """Write a markdown report atomically (:func:`kappaflow.io_utils.write_text`).

    Args:
        path: target file, e.g. ``reports/transfer.md``; parent directories are created.
        *sections: markdown blocks, joined by blank lines.
        title: optional level-1 heading.

    Returns:
        The written path.
    """
    blocks = ([f"# {title}"] if title else []) + [s.strip("\n") for s in sections]
    return write_text(path, "\n\n".join(blocks) + "\n")
