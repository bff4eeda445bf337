"""Names in MLflow: experiments per purpose, short run names, one metric naming scheme.

* **Experiments**: one per purpose (:data:`PURPOSES`), stages mapped by :data:`STAGE_PURPOSE`.
* **Run names** lead with what differs between runs of one experiment, joined by ``·``:
  ``finetune·D2·freeze``, ``pretrain·cgcnn``, ``prepare·AGL`` (:func:`run_label`; dataset
  aliases from ``tracking.aliases``).
* **Metrics**: ``<split>_<quantity>[_<unit>]`` without slashes (MLflow groups slash names into
  chart sections of their own): per-epoch curves ``train_loss``, ``val_loss``,
  ``val_log10_mae`` (κ), single values ``test_e_form_mae_eV_per_atom``, ``best_val_loss``;
  cross-validation summaries ``log10_mae_mean`` / ``_std``, ``mape_mean`` (%),
  ``spearman_mean``. Counts (``n``, ``n_train``…) are params or tags, never metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: Experiment purposes, in the order the pipeline runs them.
PURPOSES: tuple[str, ...] = ("data", "pretrain", "transfer", "registry", "sweeps")
#: The experiment purpose of each stage.
STAGE_PURPOSE: dict[str, str] = {
    "ingest": "data",
    "prepare": "data",
    "featurize": "data",
    "leakage": "data",
    "pretrain": "pretrain",
    "finetune": "transfer",
    "finetune_other": "transfer",
    "extrapolate": "transfer",
    "pretrain_size": "transfer",
    "evaluate": "transfer",
    "register": "registry",
    "screen": "registry",
    "sweep": "sweeps",
}
#: Separator of run-name parts.
SEP = "·"
#: Unit strings of dataset cards → metric-name suffixes.
UNIT_SUFFIX: dict[str, str] = {
    "W/m/K": "W_per_mK",
    "W/(m K)": "W_per_mK",
    "eV/atom": "eV_per_atom",
    "eV": "eV",
    "cm": "cm",
    "%": "pct",
}


def dataset_alias(dataset: str, aliases: Mapping[str, str] | None = None) -> str:
    """Short name of a dataset for run and metric names (``paraisite_d1`` → ``D1``).

    Args:
        dataset: dataset card name.
        aliases: ``tracking.aliases``; a name without alias is kept as is.
    """
    return str((aliases or {}).get(dataset) or dataset)


def run_label(stage: str, *parts: Any) -> str:
    """Run name ``stage·part·part`` (empty parts left out), e.g. ``finetune·D2·freeze``."""
    return SEP.join(str(p) for p in (stage, *parts) if p not in (None, ""))


def unit_suffix(unit: str | None) -> str:
    """Metric-name suffix of a unit (``eV/atom`` → ``eV_per_atom``; none → ``""``)."""
    if not unit:
        return ""
    if unit in UNIT_SUFFIX:
        return UNIT_SUFFIX[unit]
    return re.sub(r"[^0-9A-Za-z]+", "_", unit.replace("/", "_per_")).strip("_")


def metric_key(key: str, units: Mapping[str, str | None] | None = None) -> str:
    """MLflow name of a Lightning metric key (``val/kappa/mae_log10`` → ``val_log10_mae``).

    ``<split>/loss`` → ``<split>_loss``; ``<split>/<target>/mae`` →
    ``<split>_<target>_mae_<unit>`` (unit from ``units``); ``<split>/<target>/mae_log10`` →
    ``<split>_log10_mae`` for κ, ``<split>_<target>_log10_mae`` otherwise; ``lr/<group>`` →
    ``lr_<group>``; anything else: slashes become underscores.
    """
    parts = key.split("/")
    if len(parts) == 3:
        split, target, what = parts
        if what == "mae_log10":
            return f"{split}_log10_mae" if target == "kappa" else f"{split}_{target}_log10_mae"
        if what == "mae":
            suffix = unit_suffix((units or {}).get(target))
            return "_".join(p for p in (split, target, "mae", suffix) if p)
    return "_".join(parts)


def is_count(key: str) -> bool:
    """Tell counts (``n``, ``n_train``, ``n_folds``…: params or tags, never metrics)."""
    return key == "n" or key.startswith("n_")


def cv_metric_key(key: str) -> str:
    """MLflow name of a cross-validation metric (``mae`` → ``kappa_mae_W_per_mK``)."""
    if key == "mae" or key.startswith("mae_"):
        return "kappa_mae_W_per_mK" + key[3:]
    return key


def finite_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numeric values (no bools, no counts) as ``{prefix + cv_metric_key(k): float}``."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or is_count(k):
            continue
        if math.isfinite(float(v)):
            out[prefix + cv_metric_key(k)] = float(v)
    return out
