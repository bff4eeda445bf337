"""Batched scoring: crystals (or CIF text) -> featurize -> ensemble -> κ ± σ + domain flags.

One output row per input, always: a crystal that cannot be parsed, fails the structure checks
(:func:`kappaflow.data.validation.check_crystal`) or gets a non-finite prediction has NaN κ and
an ``error`` (``<reason>: <detail>``); the rest of its batch is still predicted.

Output columns (:data:`COLUMNS`): ``id``, ``formula`` (pymatgen reduced), ``kappa`` (W/m/K,
10**log10_kappa), ``log10_kappa`` (mean over members), ``sigma_log10`` (std over members of
log10 κ, decades: the members' disagreement, not an interval), ``kappa_lo68``/``kappa_hi68`` and
``kappa_lo95``/``kappa_hi95`` (W/m/K: conformal intervals calibrated on the out-of-fold residuals
of the registered strategy, :mod:`kappaflow.evaluation.calibration`; NaN for an uncalibrated
ensemble), ``in_domain``, ``ood_reason``, ``nn_distance`` (standardized embedding distance to the
nearest training material), ``error``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kappaflow.structure.crystal import CrystalArrays

if TYPE_CHECKING:
    from kappaflow.data.validation import ValidationOptions
    from kappaflow.registry.domain import DomainInfo
    from kappaflow.registry.ensemble import KappaEnsemble

COLUMNS = (
    "id",
    "formula",
    "kappa",
    "log10_kappa",
    "sigma_log10",
    "kappa_lo68",
    "kappa_hi68",
    "kappa_lo95",
    "kappa_hi95",
    "in_domain",
    "ood_reason",
    "nn_distance",
    "error",
)
#: Reason code of a crystal whose ensemble prediction is NaN/inf.
NONFINITE = "prediction_nonfinite"


@dataclass(frozen=True)
class Item:
    """One structure to score: an id, a parsed crystal (or why there is none), a formula.

    ``spacegroup`` is metadata for the caller (-1: unknown or not computed); it does not
    change the prediction.
    """

    id: str
    crystal: CrystalArrays | None
    formula: str = ""
    error: str = ""
    spacegroup: int = -1


def _formula(crystal: CrystalArrays) -> str:
    from kappaflow.data.validation import structure_formula

    return structure_formula(crystal)


def default_options(cutoff: float) -> ValidationOptions:
    """Return the validation limits for scoring with a model of graph cutoff ``cutoff`` (Å)."""
    from kappaflow.data.validation import ValidationOptions

    return ValidationOptions(cutoff=cutoff)


def item_from_cif(
    text: str, material_id: str, cutoff: float, opts: ValidationOptions | None = None
) -> Item:
    """Parse and check one CIF; a problem becomes ``Item.error`` (never raises for bad data).

    Args:
        text: CIF contents.
        material_id: id of the row.
        cutoff: graph cutoff, Å (atoms without a neighbour within it are rejected).
        opts: limits and thresholds (default :func:`default_options` of ``cutoff``); the
            parse limits apply before any expensive work.
    """
    from kappaflow.structure.cif import CifError, parse_cif

    opts = opts or default_options(cutoff)
    try:
        crystal = parse_cif(text, opts.parse_limits())
    except CifError as exc:
        return Item(material_id, None, "", f"{exc.reason.value}: {exc.detail}")
    except Exception as exc:  # one hostile input never stops the batch
        return Item(material_id, None, "", f"check_failed: {type(exc).__name__}: {exc}")
    return checked_item(crystal, material_id, cutoff, opts)


def checked_item(
    crystal: CrystalArrays,
    material_id: str,
    cutoff: float,
    opts: ValidationOptions | None = None,
) -> Item:
    """Run the structure checks on a parsed crystal; a failure becomes ``Item.error``.

    Args:
        crystal: the parsed crystal.
        material_id: id of the row.
        cutoff: graph cutoff, Å.
        opts: limits and thresholds (default :func:`default_options` of ``cutoff``).
    """
    from kappaflow.data.validation import check_crystal

    rejection = check_crystal(crystal, opts or default_options(cutoff))
    if rejection is not None:
        return Item(material_id, None, "", f"{rejection.reason.value}: {rejection.detail}")
    return Item(material_id, crystal, _formula(crystal))


def _error_row(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "formula": item.formula,
        "kappa": np.nan,
        "log10_kappa": np.nan,
        "sigma_log10": np.nan,
        "kappa_lo68": np.nan,
        "kappa_hi68": np.nan,
        "kappa_lo95": np.nan,
        "kappa_hi95": np.nan,
        "in_domain": False,
        "ood_reason": "",
        "nn_distance": np.nan,
        "error": item.error,
    }


def predict_items(
    ensemble: KappaEnsemble, domain: DomainInfo | None, items: Sequence[Item]
) -> pd.DataFrame:
    """Score one batch of items (featurize, ensemble, domain flags) in input order.

    Args:
        ensemble: the members.
        domain: the training domain (None: every row in domain, no distance).
        items: the batch; items with an ``error`` come back as error rows.

    Returns:
        A frame with :data:`COLUMNS`, one row per item, same order.
    """
    from kappaflow.registry.domain import ood_flags

    good = [i for i, it in enumerate(items) if it.crystal is not None and not it.error]
    good_set = set(good)
    rows: list[dict[str, Any]] = [
        {} if i in good_set else _error_row(it) for i, it in enumerate(items)
    ]
    data = []
    for i in list(good):  # a featurization failure is that item's error, not the batch's
        it = items[i]
        try:
            data.append(ensemble.featurize(it.crystal, it.id, it.formula))  # type: ignore[arg-type]
        except Exception as exc:
            good.remove(i)
            failed = Item(it.id, None, it.formula, f"featurize_failed: {type(exc).__name__}: {exc}")
            rows[i] = _error_row(failed)
    if good:
        batch = [items[i] for i in good]
        out = ensemble.predict(data)
        numbers = [it.crystal.numbers for it in batch]  # type: ignore[union-attr]
        if domain is not None:
            in_dom, reasons, dist = ood_flags(domain, numbers, out.embedding)
        else:
            in_dom, reasons, dist = (
                np.ones(len(batch), bool),
                [""] * len(batch),
                np.full(len(batch), np.nan),
            )
        cal = ensemble.calibration
        for k, i in enumerate(good):
            mu, sd = float(out.log10_kappa[k]), float(out.sigma_log10[k])
            finite = np.isfinite(out.members_log10[k]).all()
            q68 = cal.half_width[0.68] if cal is not None and finite else np.nan
            q95 = cal.half_width[0.95] if cal is not None and finite else np.nan
            rows[i] = {
                "id": batch[k].id,
                "formula": batch[k].formula,
                "kappa": 10.0**mu if finite else np.nan,
                "log10_kappa": mu if finite else np.nan,
                "sigma_log10": sd if finite else np.nan,
                "kappa_lo68": 10.0 ** (mu - q68),
                "kappa_hi68": 10.0 ** (mu + q68),
                "kappa_lo95": 10.0 ** (mu - q95),
                "kappa_hi95": 10.0 ** (mu + q95),
                "in_domain": bool(in_dom[k]) and bool(finite),
                "ood_reason": reasons[k],
                "nn_distance": float(dist[k]),
                "error": "" if finite else f"{NONFINITE}: a member predicted a non-finite log10 κ",
            }
    return pd.DataFrame(rows, columns=list(COLUMNS))


def batched(iterable: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    chunk: list[Item] = []
    for it in iterable:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_stream(
    ensemble: KappaEnsemble,
    domain: DomainInfo | None,
    items: Iterable[Item],
    batch_size: int = 64,
) -> Iterator[pd.DataFrame]:
    """Score a (lazy) stream of items batch by batch; yields one frame per batch."""
    for chunk in batched(items, batch_size):
        yield predict_items(ensemble, domain, chunk)


def predict_cifs(
    ensemble: KappaEnsemble,
    domain: DomainInfo | None,
    cifs: Sequence[str],
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Score CIF texts; malformed ones get an ``error`` row, the others are predicted.

    Args:
        ensemble: the members.
        domain: training domain (None: no flags).
        cifs: CIF contents.
        ids: row ids (default ``"0"``, ``"1"``, ...).
        batch_size: crystals per ensemble batch.
    """
    if ids is None:
        ids = [str(i) for i in range(len(cifs))]
    if len(ids) != len(cifs):
        raise ValueError(f"{len(ids)} ids for {len(cifs)} CIFs")
    cutoff = ensemble.graph.cutoff
    items = (item_from_cif(c, str(i), cutoff) for c, i in zip(cifs, ids, strict=True))
    frames = list(predict_stream(ensemble, domain, items, batch_size))
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)
