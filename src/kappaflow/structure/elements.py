"""Per-element input features for crystal graph networks, computed from pymatgen element data.

``element_feature_table("cgcnn")`` rebuilds the *style* of the CGCNN atom features
(Xie & Grossman, PRL 120, 145301 (2018), Table S2): a concatenation of one-hot blocks, one per
elemental property, with continuous properties split into equal-width bins. The values are read
from :class:`pymatgen.core.periodic_table.Element` on first use, not copied from CGCNN's
``atom_init.json``, so the table is reproducible from the installed pymatgen version.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from pymatgen.core.periodic_table import Element

#: Largest supported atomic number (Fm). Rows ``1..MAX_Z`` of every table are filled.
MAX_Z = 100
#: Atomic numbers the feature tables cover; validation rejects anything else.
SUPPORTED_Z = range(1, MAX_Z + 1)

#: Number of bins for each continuous property.
N_BINS = 10
#: Valence-electron bins: 1, 2, ..., 11, and ">= 12".
N_VALENCE = 12
#: Period bins: rows 1-7, then lanthanoids and actinoids as rows 8 and 9 (CGCNN convention).
N_PERIOD = 9
BLOCKS = ("s", "p", "d", "f")

_NOBLE_CORE_Z = {2: 2, 3: 10, 4: 18, 5: 36, 6: 54, 7: 86}


def _float_or_nan(value: object) -> float:
    """Convert a pymatgen value (float, ``FloatWithUnit``, ``None``) to float; NaN if missing."""
    if value is None:
        return math.nan
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _safe(getter: Callable[[Element], object], el: Element) -> float:
    try:
        return _float_or_nan(getter(el))
    except (AttributeError, KeyError, ValueError, TypeError):
        return math.nan


def _period(el: Element) -> float:
    if el.is_lanthanoid:
        return 8.0
    if el.is_actinoid:
        return 9.0
    return float(el.row)


def _radius(el: Element) -> float:
    """Empirical atomic radius (Slater), falling back to the calculated (Clementi) radius, Å."""
    r = _safe(lambda e: e.atomic_radius, el)
    return r if math.isfinite(r) else _safe(lambda e: e.atomic_radius_calculated, el)


def _valence_electrons(el: Element) -> float:
    """Valence electrons: group rule for s/p/d elements, core-count rule for f elements."""
    if el.is_lanthanoid or el.is_actinoid:
        n = el.Z - _NOBLE_CORE_Z[el.row]
        shell = 4 if el.is_lanthanoid else 5
        if any(s == (shell, "f", 14) for s in el.full_electronic_structure) and n > 14:
            n -= 14  # a filled 4f/5f shell is core-like (Yb, Lu, No, Lr)
        return float(n)
    if el.Z == 2:
        return 2.0
    g = el.group
    return float(g if g <= 12 else g - 10)


def _f_electrons(el: Element) -> float:
    """Electrons in the open-or-filled 4f (lanthanoids) or 5f (actinoids) shell; 0 otherwise."""
    if not (el.is_lanthanoid or el.is_actinoid):
        return 0.0
    shell = 4 if el.is_lanthanoid else 5
    return float(sum(c for n, orb, c in el.full_electronic_structure if n == shell and orb == "f"))


def _onehot_categorical(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """One-hot over ``categories`` plus a trailing "unknown" column for NaN/unlisted values."""
    out = np.zeros((len(values), len(categories) + 1), dtype=np.float32)
    for row, v in enumerate(values):
        hit = np.flatnonzero(categories == v) if math.isfinite(v) else np.zeros(0, dtype=np.int64)
        out[row, hit[0] if len(hit) else len(categories)] = 1.0
    return out


def _onehot_binned(values: np.ndarray, n_bins: int, log: bool = False) -> np.ndarray:
    """Equal-width bins over the finite range of ``values`` (log scale if ``log``) + "unknown"."""
    v = np.log(values) if log else values.astype(np.float64)
    finite = np.isfinite(v)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    idx = np.full(len(v), n_bins, dtype=np.int64)
    scaled = (v[finite] - lo) / (hi - lo) * n_bins
    idx[finite] = np.clip(np.floor(scaled), 0, n_bins - 1).astype(np.int64)
    out = np.zeros((len(v), n_bins + 1), dtype=np.float32)
    out[np.arange(len(v)), idx] = 1.0
    return out


@cache
def _cgcnn_table() -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data for heavy elements
        els = [Element.from_Z(z) for z in SUPPORTED_Z]
        col = {
            "group": np.array([float(e.group) for e in els]),
            "period": np.array([_period(e) for e in els]),
            "x": np.array([_safe(lambda e: e.X, e) for e in els]),
            "radius": np.array([_radius(e) for e in els]),
            "valence": np.array([min(_valence_electrons(e), N_VALENCE) for e in els]),
            "f": np.array([_f_electrons(e) for e in els]),
            "ie": np.array([_safe(lambda e: e.ionization_energy, e) for e in els]),
            "ea": np.array([_safe(lambda e: e.electron_affinity, e) for e in els]),
            "block": np.array([float(BLOCKS.index(e.block)) for e in els]),
            "volume": np.array([_safe(lambda e: e.molar_volume, e) for e in els]),
        }
    blocks = [
        _onehot_categorical(col["group"], np.arange(1, 19, dtype=np.float64)),
        _onehot_categorical(col["period"], np.arange(1, N_PERIOD + 1, dtype=np.float64)),
        _onehot_binned(col["x"], N_BINS),
        _onehot_binned(col["radius"], N_BINS),
        _onehot_categorical(col["valence"], np.arange(1, N_VALENCE + 1, dtype=np.float64)),
        _onehot_categorical(col["f"], np.arange(0, 15, dtype=np.float64)),
        _onehot_binned(col["ie"], N_BINS, log=True),
        _onehot_binned(col["ea"], N_BINS),
        _onehot_categorical(col["block"], np.arange(len(BLOCKS), dtype=np.float64)),
        _onehot_binned(col["volume"], N_BINS, log=True),
    ]
    body = np.concatenate(blocks, axis=1)
    table = np.zeros((MAX_Z + 1, body.shape[1]), dtype=np.float32)
    table[1:] = body
    table.setflags(write=False)
    return table


@cache
def _onehot_table() -> np.ndarray:
    table = np.zeros((MAX_Z + 1, MAX_Z), dtype=np.float32)
    table[np.arange(1, MAX_Z + 1), np.arange(MAX_Z)] = 1.0
    table.setflags(write=False)
    return table


_KINDS: dict[str, Callable[[], np.ndarray]] = {"cgcnn": _cgcnn_table, "onehot": _onehot_table}


def element_feature_table(kind: str = "cgcnn") -> torch.Tensor:
    """Per-element feature table indexed by atomic number.

    ``kind="cgcnn"`` concatenates these one-hot blocks (each with a final "unknown" column that
    is set when pymatgen has no value, so no row contains NaN; continuous properties use
    ``N_BINS`` = 10 equal-width bins spanning the range over Z = 1..MAX_Z):

    ====================  =====  =====================================================
    block                 width  source (pymatgen ``Element``)
    ====================  =====  =====================================================
    group                 18+1   ``group`` (lanthanoids/actinoids: 3)
    period                9+1    ``row``; lanthanoids -> 8, actinoids -> 9
    electronegativity     10+1   ``X`` (Pauling), linear bins; noble gases often unknown
    atomic radius         10+1   ``atomic_radius`` (Slater, Å), else
                                 ``atomic_radius_calculated``; linear bins
    valence electrons     12+1   group g (g <= 12) or g - 10 (g >= 13), He: 2;
                                 f elements: electrons beyond the noble-gas core minus a
                                 filled f shell; values >= 12 share the last bin
    f electrons           15+1   4f/5f occupation from ``full_electronic_structure``
                                 (0 outside the f block); separates the rare earths
    first ionization      10+1   ``ionization_energy`` (eV), log-scale bins
    electron affinity     10+1   ``electron_affinity`` (eV, may be negative), linear bins
    block                 4+1    ``block`` (s, p, d, f)
    molar volume          10+1   ``molar_volume`` (cm^3/mol), log-scale bins
    ====================  =====  =====================================================

    ``kind="onehot"`` is a plain one-hot of Z (width MAX_Z), for ablations.

    The table is built once per process (``functools.cache``); each call returns a fresh copy,
    so callers may modify it (e.g. ``nn.Embedding.from_pretrained(..., freeze=False)``).

    Args:
        kind: ``"cgcnn"`` or ``"onehot"``.

    Returns:
        float32 tensor [MAX_Z + 1, d]; row 0 is all zeros (no element has Z = 0).

    Raises:
        ValueError: unknown ``kind``.
    """
    try:
        builder = _KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown element feature kind {kind!r}; choose from {sorted(_KINDS)}"
        ) from None
    return torch.from_numpy(builder().copy())
