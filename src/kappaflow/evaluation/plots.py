"""Report figures: parity, learning curves, strategy comparison and training-size study.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot global
state, no display needed). Every function writes its file atomically
(:func:`kappaflow.io_utils.atomic_write`: temporary file in the same directory, then
``os.replace``), creating parent directories, and returns the written path. The format follows
the path suffix (``.png``, ``.pdf``, ``.svg``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from kappaflow.evaluation.metrics import basic_metrics, regression_metrics
from kappaflow.io_utils import atomic_write

PathLike = str | os.PathLike[str]


def _new_figure(width: float = 5.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` atomically to ``path`` and return it."""
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"figure path {out} has no suffix to pick the format from")
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))


def parity_plot(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    path: PathLike,
    *,
    log: bool = True,
    title: str | None = None,
    units: str = "W/m/K",
    quantity: str = "κ",
) -> Path:
    """Scatter predicted vs reference values with the y = x line and metrics in the legend.

    Args:
        y_true: reference values in raw units (κ in W/m/K).
        y_pred: predictions in the same units.
        path: output file.
        log: log-log axes and κ metrics (:func:`regression_metrics`, values must be > 0);
            otherwise linear axes and :func:`basic_metrics`.
        title: figure title.
        units: unit label of the axes.
        quantity: symbol of the plotted quantity.

    Returns:
        The written path.
    """
    if log:
        m = regression_metrics(y_true, y_pred)
        text = (
            f"log10 MAE = {m['log10_mae']:.3f}\nR² (log10) = {m['log10_r2']:.3f}\n"
            f"Spearman ρ = {m['spearman']:.3f}\nMAPE = {m['mape']:.1f} %\nn = {int(m['n'])}"
        )
    else:
        m = basic_metrics(y_true, y_pred)
        text = (
            f"MAE = {m['mae']:.3g} {units}\nRMSE = {m['rmse']:.3g} {units}\n"
            f"R² = {m['r2']:.3f}\nn = {int(m['n'])}"
        )
    t = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(y_pred, dtype=float).reshape(-1)
    lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
    if log:
        lo, hi = lo / 1.5, hi * 1.5
    else:
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        lo, hi = lo - pad, hi + pad
    fig = _new_figure(4.8, 4.5)
    ax = fig.add_subplot()
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.scatter(t, p, s=14, alpha=0.7, edgecolors="none", label=text)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {quantity} ({units})")
    ax.set_ylabel(f"predicted {quantity} ({units})")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def learning_curve_plot(
    history: Mapping[str, Sequence[float]],
    path: PathLike,
    *,
    title: str | None = None,
    ylabel: str = "loss",
    logy: bool = False,
) -> Path:
    """Plot per-epoch curves, e.g. ``{"train_loss": [...], "val_loss": [...]}``.

    Args:
        history: series name -> one value per epoch (NaN leaves a gap).
        path: output file.
        title: figure title.
        ylabel: y-axis label (e.g. ``"MSE (standardized log10 κ)"``).
        logy: logarithmic y axis.

    Returns:
        The written path.
    """
    series = {k: np.asarray(v, dtype=float).reshape(-1) for k, v in history.items()}
    series = {k: v for k, v in series.items() if len(v)}
    if not series:
        raise ValueError("history has no non-empty series")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(
            np.arange(1, len(values) + 1),
            values,
            marker="." if len(values) < 50 else None,
            label=name,
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def strategy_comparison_plot(
    table: pd.DataFrame,
    path: PathLike,
    *,
    metric: str = "log10_mae",
    strategy_col: str = "strategy",
    dataset_col: str = "dataset",
    title: str | None = None,
    ylabel: str | None = None,
) -> Path:
    """Draw a grouped bar chart of a metric (mean ± std over folds) per dataset and strategy.

    Args:
        table: one row per (strategy, dataset) with columns ``<metric>_mean`` and optionally
            ``<metric>_std`` (as produced by :func:`~kappaflow.evaluation.metrics.aggregate_folds`).
        path: output file.
        metric: metric name, e.g. ``"log10_mae"`` (decades of κ).
        strategy_col: column naming the training strategy (bars within a group).
        dataset_col: column naming the evaluation dataset (groups on the x axis).
        title: figure title.
        ylabel: y-axis label (defaults to the metric name).

    Returns:
        The written path.
    """
    mean_col, std_col = f"{metric}_mean", f"{metric}_std"
    missing = {strategy_col, dataset_col, mean_col} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks column(s) {sorted(missing)}; has {list(table.columns)}")
    if table.empty:
        raise ValueError("table is empty")
    if table.duplicated([strategy_col, dataset_col]).any():
        raise ValueError(f"duplicated ({strategy_col}, {dataset_col}) rows")
    strategies = list(dict.fromkeys(table[strategy_col]))
    datasets = list(dict.fromkeys(table[dataset_col]))
    means = table.pivot(index=dataset_col, columns=strategy_col, values=mean_col)
    means = means.reindex(index=datasets, columns=strategies)
    stds = None
    if std_col in table.columns:
        stds = table.pivot(index=dataset_col, columns=strategy_col, values=std_col)
        stds = stds.reindex(index=datasets, columns=strategies)
    width = 0.8 / len(strategies)
    x = np.arange(len(datasets))
    fig = _new_figure(max(5.0, 1.2 * len(datasets) * max(1, len(strategies)) ** 0.5 + 2), 4.0)
    ax = fig.add_subplot()
    for i, strategy in enumerate(strategies):
        ax.bar(
            x + (i - (len(strategies) - 1) / 2) * width,
            means[strategy].to_numpy(dtype=float),
            width,
            yerr=None if stds is None else stds[strategy].to_numpy(dtype=float),
            capsize=3,
            label=str(strategy),
        )
    ax.set_xticks(x, [str(d) for d in datasets])
    ax.set_ylabel(ylabel or metric)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def message_plot(path: PathLike, text: str, width: float = 6.0, height: float = 2.0) -> Path:
    """Write a figure holding only ``text`` and return its path.

    What a plot output shows when there is nothing to plot (a study not run in this
    configuration, a pipeline without a champion): the output exists and says why.
    """
    import textwrap

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    wrapped = "\n".join(textwrap.wrap(text, width=int(14 * width)))
    fig.text(0.02, 0.5, wrapped, fontsize=7, va="center")
    return _save(fig, path, dpi=100)


def size_study_plot(
    fractions: ArrayLike,
    maes: ArrayLike | Mapping[str, ArrayLike],
    stds: ArrayLike | Mapping[str, ArrayLike] | None,
    path: PathLike,
    *,
    xlabel: str = "fraction of training data",
    ylabel: str = "log10 MAE of κ",
    logx: bool = False,
    title: str | None = None,
) -> Path:
    """Error vs training-set size, one line with error bars per series.

    Args:
        fractions: training-set fractions (or sizes), x values.
        maes: mean error per fraction, or series name -> mean errors (e.g. per strategy).
        stds: standard deviations with the same structure as ``maes``, or None.
        path: output file.
        xlabel: x-axis label.
        ylabel: y-axis label.
        logx: logarithmic x axis.
        title: figure title.

    Returns:
        The written path.
    """
    x = np.asarray(fractions, dtype=float).reshape(-1)
    if isinstance(maes, Mapping):
        series = {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in maes.items()}
        if stds is not None and not isinstance(stds, Mapping):
            raise ValueError("stds must be a mapping with the same keys as maes")
        errs = {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in (stds or {}).items()}
    else:
        series = {"": np.asarray(maes, dtype=float).reshape(-1)}
        if isinstance(stds, Mapping):
            raise ValueError("stds must be an array when maes is an array")
        errs = {} if stds is None else {"": np.asarray(stds, dtype=float).reshape(-1)}
    if not series:
        raise ValueError("no series to plot")
    for name, y in series.items():
        if len(y) != len(x) or (name in errs and len(errs[name]) != len(x)):
            raise ValueError(f"series {name!r}: lengths differ from {len(x)} fractions")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, y in series.items():
        ax.errorbar(x, y, yerr=errs.get(name), marker="o", capsize=3, label=name or None)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if any(series):
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def extrapolation_plot(
    kappa_true: ArrayLike,
    predictions: Mapping[str, ArrayLike],
    heldout_idx: ArrayLike,
    threshold: float,
    path: PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Predicted vs true κ (log-log, W/m/K) per method, held-out high-κ rows highlighted.

    Args:
        kappa_true: true κ of every row, W/m/K.
        predictions: method name -> predicted κ of every row, W/m/K.
        heldout_idx: positions of the held-out high-κ rows (never trained on).
        threshold: the κ quantile that defines them (dashed lines).
        path: output file.
        title: figure title.

    Returns:
        The written path.
    """
    t = np.asarray(kappa_true, dtype=float).reshape(-1)
    held = np.zeros(len(t), dtype=bool)
    held[np.asarray(heldout_idx, dtype=np.int64)] = True
    if not predictions:
        raise ValueError("no predictions to plot")
    n = len(predictions)
    fig = _new_figure(3.2 * n, 3.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    lo, hi = float(t.min()), float(t.max())
    for ax, (name, pred) in zip(axes, predictions.items(), strict=True):
        p = np.asarray(pred, dtype=float).reshape(-1)
        if len(p) != len(t):
            raise ValueError(f"{name}: {len(p)} predictions for {len(t)} rows")
        lo, hi = min(lo, float(p.min())), max(hi, float(p.max()))
        ax.scatter(t[~held], p[~held], s=6, alpha=0.4, color="tab:gray", label="trained on")
        ax.scatter(t[held], p[held], s=10, alpha=0.8, color="tab:red", label="held out (high κ)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(threshold, ls="--", lw=0.8, color="k")
        ax.axhline(threshold, ls="--", lw=0.8, color="k")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("true κ (W/m/K)")
    for ax in axes:
        ax.plot([lo, hi], [lo, hi], lw=0.8, color="k")
    axes[0].set_ylabel("predicted κ (W/m/K)")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def reliability_plot(
    curves: Mapping[str, pd.DataFrame], path: PathLike, *, title: str | None = None
) -> Path:
    """Measured vs nominal coverage of calibrated κ intervals, one line per model.

    Args:
        curves: label -> table with ``nominal`` and ``coverage`` columns (fractions), e.g. from
            :func:`kappaflow.evaluation.calibration.reliability_curve`.
        path: output file.
        title: figure title.

    Returns:
        The written path.
    """
    if not curves:
        raise ValueError("no reliability curve to plot")
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="ideal")
    for label, table in curves.items():
        ax.plot(table["nominal"], table["coverage"], marker=".", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of the κ interval")
    ax.set_ylabel("measured coverage (held-out folds)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Data files of DVC plots (``plots:`` in dvc.yaml): DVC draws and diffs them across experiments
# --------------------------------------------------------------------------------------------

#: Columns of :func:`parity_data` (κ in W/m/K).
PARITY_COLUMNS = ("strategy", "id", "kappa_true", "kappa_pred")
#: Columns of :func:`strategy_comparison_data` (log10-MAE: dimensionless, log10 of W/m/K).
STRATEGY_COLUMNS = ("strategy", "dataset", "log10_mae_mean", "log10_mae_std")


def parity_data(predictions: Mapping[str, pd.DataFrame], path: PathLike) -> Path:
    """Write one CSV of out-of-fold κ predictions of several strategies (a DVC parity plot).

    One row per prediction: ``strategy, id, kappa_true, kappa_pred`` (W/m/K), rows with a
    non-positive or non-finite κ left out (log axes). ``.dvc/plots/kappa_parity.json`` colours by
    ``strategy``, draws y = x and clips the axes to the decades of the true κ.

    Args:
        predictions: strategy -> its ``predictions.csv`` table (``kappa_true``, ``kappa_pred``;
            ``id`` optional).
        path: output CSV.

    Returns:
        The written path.
    """
    frames = []
    for strategy, table in predictions.items():
        frame = pd.DataFrame(
            {
                "strategy": str(strategy),
                "id": table["id"].astype(str) if "id" in table else range(len(table)),
                "kappa_true": pd.to_numeric(table["kappa_true"], errors="coerce"),
                "kappa_pred": pd.to_numeric(table["kappa_pred"], errors="coerce"),
            }
        )
        ok = np.isfinite(frame[["kappa_true", "kappa_pred"]]).all(axis=1)
        ok &= (frame["kappa_true"] > 0) & (frame["kappa_pred"] > 0)
        frames.append(frame[ok])
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    data = data.reindex(columns=list(PARITY_COLUMNS))
    return atomic_write(Path(path), lambda tmp: data.to_csv(tmp, index=False))


def strategy_comparison_data(results: pd.DataFrame, path: PathLike) -> Path:
    """Write log10-MAE mean/std per strategy × dataset as a CSV (a DVC bar plot).

    Args:
        results: result rows with ``strategy``, ``train_set`` (or ``dataset``),
            ``log10_mae_mean`` and ``log10_mae_std`` (baselines ``baseline:<name>`` included).
        path: output CSV, :data:`STRATEGY_COLUMNS`.

    Returns:
        The written path.
    """
    table = results.rename(columns={"train_set": "dataset"})
    data = table.reindex(columns=list(STRATEGY_COLUMNS)).dropna(subset=["log10_mae_mean"])
    return atomic_write(Path(path), lambda tmp: data.to_csv(tmp, index=False))
