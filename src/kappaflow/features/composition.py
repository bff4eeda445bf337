"""Magpie composition descriptors (Ward et al., npj Comput. Mater. 2, 16028 (2016)).

The feature *definitions and element data* are matminer's:
``ElementProperty.from_preset("magpie")`` (22 elemental properties x 6 statistics = 132
features), optionally ``Stoichiometry()`` (6 p-norms) and ``ValenceOrbital()`` (8 valence-shell
averages and fractions). matminer evaluates them one composition at a time in Python
(~1.3 ms per formula, i.e. minutes for the 100k-row composition datasets), so this module
reads matminer's element table once and evaluates the same statistics vectorised over all
*unique* formulas with numpy; the result equals ``featurize`` of the matminer featurizers to
floating-point rounding (checked in ``tests/features``; :func:`magpie_features_matminer` is
the reference path).

NaN handling: matminer's ``MagpieData`` (``impute_nan=True``, its default) already replaces
missing elemental values by the mean over the elements, so finite formulas give finite
features. Any NaN that remains (e.g. a valence fraction with zero valence electrons) is set
to 0 and reported by a ``RuntimeWarning``. Models standardise inputs with train-split
statistics (see :class:`kappaflow.models.descriptor_mlp.DescriptorMLPEncoder`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Composition, Element

#: Optional feature groups on top of the 132 ``ElementProperty`` magpie features.
EXTRAS = ("stoichiometry", "valence_orbital")
#: ``Stoichiometry`` p values (matminer default).
P_NORMS = (0, 2, 3, 5, 7, 10)
#: ``ValenceOrbital`` orbitals (matminer default); properties are "avg" then "frac".
ORBITALS = ("s", "p", "d", "f")
#: Largest atomic number in matminer's Magpie element tables.
MAGPIE_MAX_Z = 118


@cache
def _element_property():  # noqa: ANN202 - matminer type, imported lazily (slow import)
    from matminer.featurizers.composition import ElementProperty

    return ElementProperty.from_preset("magpie")


@cache
def _element_table() -> np.ndarray:
    """[MAGPIE_MAX_Z + 1, n_properties] Magpie element data (row 0 unused, NaN)."""
    ep = _element_property()
    table = np.full((MAGPIE_MAX_Z + 1, len(ep.features)), np.nan)
    for z in range(1, MAGPIE_MAX_Z + 1):
        el = Element.from_Z(z)
        table[z] = [ep.data_source.get_elemental_property(el, prop) for prop in ep.features]
    table.setflags(write=False)
    return table


def magpie_element_table() -> np.ndarray:
    """Copy of matminer's Magpie element data, ``[MAGPIE_MAX_Z + 1, 22]`` float64.

    Row ``Z`` holds the 22 elemental properties of :func:`magpie_feature_names` (in that
    order); row 0 is unused (NaN). :mod:`kappaflow.models.stack_head` stores it with a model,
    so a served model computes the same features from a crystal's atoms without matminer.
    """
    return _element_table().copy()


def _check_extras(extras: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise ValueError(f"unknown composition feature groups {unknown}; choose from {EXTRAS}")
    return tuple(e for e in EXTRAS if e in extras)  # canonical order


def magpie_feature_names(extras: Sequence[str] = ()) -> list[str]:
    """Feature names, identical to matminer's ``feature_labels()``, in column order.

    Args:
        extras: optional groups from :data:`EXTRAS` (appended in :data:`EXTRAS` order).

    Returns:
        ``["MagpieData minimum Number", ..., "0-norm", ..., "frac f valence electrons"]``.
    """
    extras = _check_extras(extras)
    names = list(_element_property().feature_labels())
    if "stoichiometry" in extras:
        names += [f"{p}-norm" for p in P_NORMS]
    if "valence_orbital" in extras:
        names += [f"{prop} {orb} valence electrons" for prop in ("avg", "frac") for orb in ORBITALS]
    return names


def n_magpie_features(extras: Sequence[str] = ()) -> int:
    """Return the number of features for ``extras`` (132, +6 stoichiometry, +8 valence)."""
    return len(magpie_feature_names(extras))


def _parse(formulas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse to padded ``(Z [N, M] int, amount [N, M] float)``; padding: Z = 0, amount 0."""
    parsed: list[tuple[list[int], list[float]]] = []
    for formula in formulas:
        try:
            comp = Composition(formula).element_composition
        except Exception as err:  # pymatgen raises several types for bad formulas
            raise ValueError(f"cannot parse formula {formula!r}: {err}") from err
        unknown = [str(el) for el in comp if not isinstance(el, Element)]
        if unknown:  # pymatgen parses unknown symbols as DummySpecies
            raise ValueError(f"formula {formula!r} has non-element species {unknown}")
        items = [(el.Z, float(amt)) for el, amt in comp.items() if amt > 0]
        if not items:
            raise ValueError(f"formula {formula!r} has no elements")
        if max(z for z, _ in items) > MAGPIE_MAX_Z:
            raise ValueError(f"formula {formula!r} has an element beyond Z = {MAGPIE_MAX_Z}")
        parsed.append(([z for z, _ in items], [a for _, a in items]))
    width = max((len(zs) for zs, _ in parsed), default=1)
    z = np.zeros((len(parsed), width), dtype=np.int64)
    amount = np.zeros((len(parsed), width))
    for row, (zs, amts) in enumerate(parsed):
        z[row, : len(zs)] = zs
        amount[row, : len(amts)] = amts
    return z, amount


def magpie_statistics(z: torch.Tensor, w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Compute the six Magpie statistics of every elemental property, weighted by amounts.

    The one implementation of the statistics (formulas here; crystal graphs in
    :mod:`kappaflow.models.stack_head`): matminer's ``PropertyStats`` ``minimum``, ``maximum``,
    ``range``, ``mean``, ``avg_dev`` and ``mode`` (the minimum value among the elements whose
    weight is ``isclose`` to the largest weight).

    Args:
        z: ``[N, M]`` atomic numbers, padded (padding: any Z with weight 0).
        w: ``[N, M]`` element amounts (any scale; 0 marks padding), float64.
        table: ``[Z_max + 1, P]`` elemental properties (:func:`magpie_element_table`).

    Returns:
        ``[N, P, 6]`` float64 (NaN where an element's property is missing).
    """
    mask = w > 0  # [N, M]
    values = table[z]  # [N, M, P]
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    present = torch.where(mask[..., None], values, zero)
    wsum = w.sum(dim=1, keepdim=True)  # [N, 1]
    mean = torch.einsum("nm,nmp->np", w, present) / wsum
    minimum = torch.where(mask[..., None], values, inf).amin(dim=1)
    maximum = torch.where(mask[..., None], values, -inf).amax(dim=1)
    avg_dev = torch.einsum("nm,nmp->np", w, (present - mean[:, None, :]).abs()) / wsum
    most = torch.isclose(w, w.amax(dim=1, keepdim=True)) & mask
    mode = torch.where(most[..., None], values, inf).amin(dim=1)
    return torch.stack([minimum, maximum, maximum - minimum, mean, avg_dev, mode], dim=2)


def _featurize_unique(formulas: Sequence[str], extras: tuple[str, ...]) -> np.ndarray:
    """Vectorised Magpie statistics for (unique) formulas -> [N, F] float64."""
    z, w = _parse(formulas)
    mask = w > 0  # [N, M]
    table = torch.from_numpy(_element_table())
    stats = magpie_statistics(torch.from_numpy(z), torch.from_numpy(w), table).numpy()
    mean = stats[:, :, 3]
    blocks = [stats.reshape(len(z), -1)]  # property-major, stat-minor, as matminer's labels
    wsum = w.sum(axis=1)[:, None]
    if "stoichiometry" in extras:
        frac = w / wsum
        norms = [mask.sum(axis=1).astype(np.float64)]
        norms += [(frac**p).sum(axis=1) ** (1.0 / p) for p in P_NORMS if p != 0]
        blocks.append(np.stack(norms, axis=1))
    if "valence_orbital" in extras:
        props = list(_element_property().features)
        avg = mean[:, [props.index(f"N{orb}Valence") for orb in ORBITALS]]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac_v = avg / mean[:, [props.index("NValence")]]
        blocks += [avg, frac_v]
    return np.concatenate(blocks, axis=1)


def magpie_features(
    formulas: Sequence[str], extras: Sequence[str] = (), dtype: type = np.float32
) -> np.ndarray:
    """Magpie descriptors for many formulas, computed once per unique formula.

    Args:
        formulas: chemical formulas (any pymatgen-parsable form; "NaCl", "Na2Cl2" and
            "Cl1Na1" give identical rows). Read CSV formula columns with
            ``keep_default_na=False``: pandas otherwise turns the formula "NaN" (sodium
            nitride) into a float NaN.
        extras: optional groups from :data:`EXTRAS`.
        dtype: output dtype.

    Returns:
        ``[len(formulas), n_magpie_features(extras)]`` array; columns named by
        :func:`magpie_feature_names`. Units are those of the Magpie element tables (e.g.
        atomic weight in u, melting point in K, covalent radius in pm, GS volume in Å^3/atom).

    Raises:
        ValueError: a formula cannot be parsed or has no elements.
    """
    extras = _check_extras(extras)
    n_features = n_magpie_features(extras)
    if len(formulas) == 0:
        return np.zeros((0, n_features), dtype=dtype)
    codes, uniques = pd.factorize(pd.Series(list(formulas), dtype=object), use_na_sentinel=False)
    bad = [f for f in uniques if not isinstance(f, str)]
    if bad:
        raise ValueError(
            f"formulas must be strings, got {bad[:3]!r} (CSV read without keep_default_na=False?)"
        )
    unique_values = _featurize_unique(list(uniques), extras)
    n_nan = int(np.isnan(unique_values).sum())
    if n_nan:
        warnings.warn(
            f"{n_nan} NaN composition feature values set to 0", RuntimeWarning, stacklevel=2
        )
        unique_values = np.nan_to_num(unique_values, nan=0.0)
    return unique_values[codes].astype(dtype, copy=False)


def magpie_features_matminer(formulas: Sequence[str], extras: Sequence[str] = ()) -> np.ndarray:
    """Compute the same features with matminer, one formula at a time (slow reference).

    Args:
        formulas: chemical formulas.
        extras: optional groups from :data:`EXTRAS`.

    Returns:
        ``[len(formulas), n_magpie_features(extras)]`` float64 array.
    """
    from matminer.featurizers.composition import Stoichiometry, ValenceOrbital

    extras = _check_extras(extras)
    featurizers = [_element_property()]
    if "stoichiometry" in extras:
        featurizers.append(Stoichiometry(p_list=P_NORMS))
    if "valence_orbital" in extras:
        featurizers.append(ValenceOrbital(orbitals=ORBITALS, props=("avg", "frac")))
    rows = []
    for formula in formulas:
        comp = Composition(formula)
        rows.append([v for f in featurizers for v in f.featurize(comp)])
    return np.asarray(rows, dtype=np.float64).reshape(len(formulas), n_magpie_features(extras))
