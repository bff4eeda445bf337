"""How far phono3py κ_L from a universal potential is from a reference: labels, or an ML model.

* :func:`kappa_validation`: the physics route against a κ set's labels (no fit involved):
  log10-MAE, share within 2×, Spearman ρ, median ratio κ_phono3py / label, computed / total and
  the wall time per computed compound. One implementation for the ``phonons`` stage (its κ sets)
  and the ``verify`` stage (the same tables, as the validation of tier 2 of the screen).
* :func:`loo_offset`: the one-number correction of the potential's systematic softening (uMLIPs
  underestimate phonon frequencies and so κ; Deng et al., npj Comput. Mater. 11, 9 (2025)): a
  constant shift of log10 κ, the median of log10(label / κ_phono3py), with its leave-one-out
  error, so the corrected figure is a held-out one (each compound's shift is fitted without it).
* :func:`ml_physics_agreement`: ratio κ_ML / κ_phono3py per candidate and whether the two
  disagree by more than a factor (the ``verify`` stage's shortlist).
* :func:`parity_plot`: κ_ML vs κ_phono3py on log–log axes with the 1:1 line, the ×/÷ factor
  lines, the ML 95 % intervals as error bars and the flagged structures marked.

κ everywhere in W/m/K. A κ that is NaN, zero or negative counts as not computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: log10(2): a prediction within 2× of the reference has |log10 ratio| ≤ this.
LOG10_2 = float(np.log10(2.0))

#: Columns of :func:`kappa_validation`'s table.
VALIDATION_COLUMNS: tuple[str, ...] = (
    "dataset",
    "n",
    "n_computed",
    "log10_mae",
    "within_2x",
    "spearman",
    "median_ratio",
    "offset_log10",
    "log10_mae_loo",
    "within_2x_loo",
    "seconds_per_compound",
)


def kappa_table_path(root: str | Path, dataset: str) -> Path:
    """``data/phonons/tables/<dataset>_kappa.parquet`` under ``root``: the phonons stage's κ."""
    return Path(root) / "data" / "phonons" / "tables" / f"{dataset}_kappa.parquet"


def _positive_log10(values: np.ndarray) -> np.ndarray:
    """log10 of the positive finite entries, NaN elsewhere."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    return np.where(ok, np.log10(np.where(ok, v, 1.0)), np.nan)


def median_offset(log_physics: np.ndarray, log_label: np.ndarray) -> float:
    """Return the softening correction: median of ``log_label - log_physics`` (decades).

    κ in W/m/K; a new compound's corrected κ is κ_phono3py × 10^offset. Inputs are finite
    arrays of the same length (at least one compound; :func:`loo_offset` checks them).
    """
    return float(np.median(np.asarray(log_label, np.float64) - np.asarray(log_physics, np.float64)))


def loo_offset(log_physics: np.ndarray, log_label: np.ndarray) -> tuple[float, np.ndarray]:
    """Constant log10 correction of the physics κ, and its leave-one-out predictions.

    Args:
        log_physics: log10 κ_phono3py (κ in W/m/K) of the reference compounds, all finite.
        log_label: log10 of their reference κ (the labels), same order.

    Returns:
        ``(offset, loo)``: ``offset`` = median of ``log_label - log_physics`` over all compounds
        (the shift applied to a new compound: κ × 10^offset); ``loo[i]`` = ``log_physics[i]``
        plus the median over every other compound (compound ``i`` not used), so
        ``|loo - log_label|`` is a held-out error. NaN (and NaNs) with fewer than 2 compounds.

    Raises:
        ValueError: different lengths or a non-finite value.
    """
    x = np.asarray(log_physics, dtype=np.float64).reshape(-1)
    y = np.asarray(log_label, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("loo_offset needs two finite arrays of the same length")
    if len(x) < 2:
        return float("nan"), np.full(len(x), np.nan)
    d = y - x
    loo = np.array([x[i] + np.median(np.delete(d, i)) for i in range(len(d))])
    return median_offset(x, y), loo


def kappa_validation(
    kappas: Mapping[str, pd.DataFrame], labels: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """phono3py κ against each dataset's labels, every labelled compound (no fit).

    Args:
        kappas: dataset -> the ``kind="kappa"`` table of
            :func:`~kappaflow.phonons.batch.compute_descriptors` (``id``, ``ph3_kappa_w_mk``
            W/m/K, ``reason``, ``seconds``).
        labels: dataset -> its labelled rows (``id``, ``kappa`` W/m/K), e.g. the table of
            :func:`kappaflow.layout.kappa_table`.

    Returns:
        One row per dataset (:data:`VALIDATION_COLUMNS`): ``n`` labelled compounds,
        ``n_computed`` with a positive finite κ, ``log10_mae`` (decades), ``within_2x``
        (fraction), ``spearman``, ``median_ratio`` (κ_phono3py / label), ``offset_log10``,
        ``log10_mae_loo`` and ``within_2x_loo`` (the softening correction of
        :func:`loo_offset` and its leave-one-out error), ``seconds_per_compound`` (mean wall
        time of the computed ones, one core per worker). NaN where nothing was computed.

    Raises:
        KeyError: a labelled id has no row in its κ table (stale table), or a dataset of
            ``kappas`` has no labels.
    """
    rows = []
    for dataset, frame in kappas.items():
        if dataset not in labels:
            raise KeyError(f"no labels for dataset {dataset!r}")
        table = labels[dataset]
        ids = table["id"].astype(str)
        indexed = frame.assign(id=frame["id"].astype(str)).drop_duplicates("id").set_index("id")
        missing = sorted(set(ids) - set(indexed.index))
        if missing:
            raise KeyError(
                f"{dataset}: {len(missing)} labelled ids have no phono3py row, e.g. {missing[:3]}"
            )
        rows_k = indexed.loc[ids]
        log_k = _positive_log10(rows_k["ph3_kappa_w_mk"].to_numpy(float))
        log_y = _positive_log10(table["kappa"].to_numpy(float))
        ok = np.isfinite(log_k) & np.isfinite(log_y)
        seconds = rows_k["seconds"].to_numpy(float)[ok]
        row: dict[str, Any] = {"dataset": dataset, "n": len(table), "n_computed": int(ok.sum())}
        if ok.any():
            err = log_k[ok] - log_y[ok]
            offset, loo = loo_offset(log_k[ok], log_y[ok])
            loo_err = np.abs(loo - log_y[ok])
            rho = pd.Series(log_k[ok]).corr(pd.Series(log_y[ok]), method="spearman")
            row |= {
                "log10_mae": float(np.abs(err).mean()),
                "within_2x": float(np.mean(np.abs(err) <= LOG10_2 + 1e-12)),
                "spearman": float(rho) if ok.sum() > 1 else float("nan"),
                "median_ratio": float(10 ** np.median(err)),
                "offset_log10": offset,
                "log10_mae_loo": float(loo_err.mean()) if ok.sum() > 1 else float("nan"),
                "within_2x_loo": float(np.mean(loo_err <= LOG10_2 + 1e-12))
                if ok.sum() > 1
                else float("nan"),
                "seconds_per_compound": float(seconds.mean()),
            }
        rows.append(row)
    return pd.DataFrame(rows, columns=list(VALIDATION_COLUMNS))


def validation_markdown(table: pd.DataFrame) -> str:
    """Markdown table of :func:`kappa_validation` (``–`` where nothing was computed)."""

    def num(x: Any, fmt: str) -> str:
        return "–" if x is None or not np.isfinite(float(x)) else format(float(x), fmt)

    def pct(x: Any) -> str:
        return "–" if x is None or not np.isfinite(float(x)) else f"{100 * float(x):.0f} %"

    lines = [
        "| dataset | computed / compounds | log10-MAE | within 2× | Spearman | median "
        "κ_phono3py / label | log10-MAE corrected (LOO) | within 2× corrected (LOO) | "
        "s/compound (1 core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        lines.append(
            f"| {r.dataset} | {r.n_computed}/{r.n} | {num(r.log10_mae, '.3f')} | "
            f"{pct(r.within_2x)} | {num(r.spearman, '.3f')} | {num(r.median_ratio, '.2f')} | "
            f"{num(r.log10_mae_loo, '.3f')} | {pct(r.within_2x_loo)} | "
            f"{num(r.seconds_per_compound, '.1f')} |"
        )
    lines.append(
        "\nUncorrected columns: the potential's κ against the labels, no fit. *Corrected (LOO)*: "
        "κ × 10^offset, the offset being the median log10(label / κ_phono3py) of the other "
        "compounds (leave one out), a one-number correction of the potential's systematic "
        "softening; `verify` applies the offset of all compounds to its candidates when its "
        "potential and settings are the validated ones."
    )
    return "\n".join(lines)


def ml_physics_agreement(
    kappa_ml: Any, kappa_physics: Any, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ratio κ_ML / κ_phono3py and whether it lies outside [1/``factor``, ``factor``].

    Args:
        kappa_ml: ML κ per candidate (W/m/K).
        kappa_physics: phono3py κ per candidate (W/m/K; NaN where not computed).
        factor: disagreement threshold (> 1), e.g. 3.0.

    Returns:
        ``(ratio, disagree)``: ratio NaN where either κ is not positive and finite (then
        ``disagree`` is False: nothing to compare).

    Raises:
        ValueError: ``factor`` is not above 1.
    """
    if not factor > 1.0:
        raise ValueError(f"disagreement factor must be > 1, got {factor}")
    log_ratio = _positive_log10(kappa_ml) - _positive_log10(kappa_physics)
    ratio = np.power(10.0, log_ratio)
    with np.errstate(invalid="ignore"):  # exactly ×factor agrees (rounding of the logs aside)
        disagree = np.abs(log_ratio) > np.log10(factor) + 1e-12
    return ratio, np.where(np.isfinite(log_ratio), disagree, False).astype(bool)


def parity_plot(table: pd.DataFrame, path: str | Path, factor: float, title: str = "") -> Any:
    """κ_ML (y) vs κ_phono3py (x), log–log; 1:1 and ×/÷ ``factor`` lines; saved to ``path``.

    Args:
        table: one row per candidate: ``kappa_ml``, ``kappa_ml_lo95``, ``kappa_ml_hi95``,
            ``kappa_phono3py`` (W/m/K), ``flags`` (comma-separated, empty when none), ``side``
            (``high``/``low``: the colour), ``formula`` (labels of the disagreeing points),
            ``disagree``.
        path: PNG file (parents created).
        factor: the disagreement factor of the dashed lines.
        title: the axes' title (default: how many candidates have both κ).

    Returns:
        The matplotlib figure (the caller closes or logs it). Candidates without a phono3py κ
        are not drawn; the title counts them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = table["kappa_phono3py"].to_numpy(float) if len(table) else np.zeros(0)
    y = table["kappa_ml"].to_numpy(float) if len(table) else np.zeros(0)
    ok = np.isfinite(_positive_log10(x)) & np.isfinite(_positive_log10(y))
    if ok.any():
        lo, hi = np.nanmin(np.r_[x[ok], y[ok]]), np.nanmax(np.r_[x[ok], y[ok]])
        lo, hi = lo / (2 * factor), hi * 2 * factor
    else:
        lo, hi = 0.1, 1000.0
    line = np.array([lo, hi])
    ax.plot(line, line, color="0.2", lw=1, label="1:1")
    ax.plot(line, line * factor, color="0.5", lw=1, ls="--", label=f"×/÷ {factor:g}")
    ax.plot(line, line / factor, color="0.5", lw=1, ls="--")
    sub = table.loc[ok]
    for side, color in (("high", "C3"), ("low", "C0")):
        part = sub[sub["side"] == side]
        if not len(part):
            continue
        yv = part["kappa_ml"].to_numpy(float)
        lo95 = part["kappa_ml_lo95"].to_numpy(float)
        hi95 = part["kappa_ml_hi95"].to_numpy(float)
        err = np.vstack([np.clip(yv - lo95, 0, None), np.clip(hi95 - yv, 0, None)])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.errorbar(
            part["kappa_phono3py"], yv, yerr=err, fmt="o", ms=5, color=color, ecolor=color,
            elinewidth=0.8, capsize=2, alpha=0.85, label=f"top {side} κ ({len(part)})",
        )  # fmt: skip
    flagged = sub[sub["flags"].astype(str) != ""]
    if len(flagged):
        kinds = sorted({f for fs in flagged["flags"].astype(str) for f in fs.split(",") if f})
        ax.scatter(
            flagged["kappa_phono3py"], flagged["kappa_ml"], s=110, facecolors="none",
            edgecolors="k", lw=1.2, label=f"flagged ({len(flagged)}): {', '.join(kinds)}",
        )  # fmt: skip
    for r in sub[sub["disagree"].astype(bool)].itertuples(index=False):
        ax.annotate(str(r.formula), (r.kappa_phono3py, r.kappa_ml), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("κ_L phono3py + universal potential, 300 K (W/m/K)")
    ax.set_ylabel("κ_L ML screen (W/m/K), 95 % interval")
    ax.set_title(title or f"{int(ok.sum())} of {len(table)} candidates with both κ")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return fig
