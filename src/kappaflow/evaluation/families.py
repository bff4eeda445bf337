"""Out-of-fold κ errors per structure family (rocksalt, zincblende, wurtzite, half-Heusler, other).

The high-fidelity κ sets are dominated by four prototypes, so one mean error hides how a model
does off them. :func:`family_errors` splits out-of-fold predictions (the ``predictions.csv`` of a
cross-validation: ``id``, ``kappa_true``, ``kappa_pred`` in W/m/K, every repeat) by
:func:`kappaflow.structure.families.structure_family` of the compound and reports log10-MAE
(decades) and the share within 2× per family; :func:`family_error_section` renders one markdown
table for several methods on the same set.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from kappaflow.evaluation.metrics import LOG10_2
from kappaflow.structure.families import FAMILIES, structure_family


def families_of(table: pd.DataFrame) -> pd.Series:
    """Structure family of every compound of a κ table (``id``, ``formula``, ``spacegroup``).

    Returns:
        Series indexed by ``id`` (as str), values from :data:`FAMILIES`.
    """
    fams = [
        structure_family(str(f), int(s))
        for f, s in zip(table["formula"], table["spacegroup"], strict=True)
    ]
    return pd.Series(fams, index=table["id"].astype(str).to_numpy(), name="family")


def family_errors(predictions: pd.DataFrame, families: pd.Series) -> pd.DataFrame:
    """Out-of-fold errors of one method per family.

    Args:
        predictions: out-of-fold rows ``id``, ``kappa_true``, ``kappa_pred`` (W/m/K, > 0).
        families: :func:`families_of` of the set.

    Returns:
        One row per family present (order of :data:`FAMILIES`): ``family``, ``n_compounds``,
        ``n_predictions`` (all repeats), ``log10_mae`` (decades), ``within_2x`` (%).

    Raises:
        KeyError: a predicted id has no family (not a compound of the set).
    """
    ids = predictions["id"].astype(str)
    missing = sorted(set(ids) - set(families.index))
    if missing:
        raise KeyError(f"predicted ids without a family: {missing[:5]}")
    err = np.abs(
        np.log10(predictions["kappa_pred"].to_numpy(float))
        - np.log10(predictions["kappa_true"].to_numpy(float))
    )
    frame = pd.DataFrame({"id": ids.to_numpy(), "family": families.loc[ids].to_numpy(), "err": err})
    rows = []
    for family in FAMILIES:
        sel = frame[frame.family == family]
        if sel.empty:
            continue
        rows.append(
            {
                "family": family,
                "n_compounds": int(sel.id.nunique()),
                "n_predictions": len(sel),
                "log10_mae": float(sel.err.mean()),
                "within_2x": float(100.0 * np.mean(sel.err <= LOG10_2)),
            }
        )
    return pd.DataFrame(rows)


def family_error_section(
    predictions: Mapping[str, pd.DataFrame], families: pd.Series, title: str = ""
) -> str:
    """Markdown table: rows = families, columns = methods, cells = log10-MAE (within 2× %).

    Args:
        predictions: method name -> its out-of-fold predictions on the set.
        families: :func:`families_of` of the set.
        title: a line above the table (e.g. the set's name).

    Returns:
        Markdown (empty string when there are no predictions).
    """
    if not predictions:
        return ""
    tables = {m: family_errors(p, families).set_index("family") for m, p in predictions.items()}
    present = [f for f in FAMILIES if any(f in t.index for t in tables.values())]
    counts = families.value_counts()
    methods = list(tables)
    lines = [title, ""] if title else []
    lines += [
        "| family | n | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for family in present:
        cells = [
            f"{t.loc[family, 'log10_mae']:.3f} ({t.loc[family, 'within_2x']:.0f} %)"
            if family in t.index
            else "—"
            for t in tables.values()
        ]
        lines.append(f"| {family} | {int(counts.get(family, 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
