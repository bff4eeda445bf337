"""Structure families of the κ sets and the anion of a compound (for domain hold-outs).

The high-fidelity κ sets cover four prototypes: rocksalt (Fm-3m, AB), zincblende (F-43m, AB),
wurtzite (P6_3mc, AB) and half-Heusler (F-43m, ABC); everything else is ``other``. The family is
read from the reduced formula's stoichiometry and the space-group number, so it needs no
structure matching and is the same for any cell setting.
"""

from __future__ import annotations

from functools import lru_cache

from pymatgen.core import Composition

FAMILIES = ("rocksalt", "zincblende", "wurtzite", "half-Heusler", "other")
_AB = {225: "rocksalt", 216: "zincblende", 186: "wurtzite"}


@lru_cache(maxsize=100_000)
def _amounts(formula: str) -> tuple[tuple[str, float], ...]:
    comp = Composition(formula).reduced_composition
    return tuple(sorted((str(el), float(n)) for el, n in comp.get_el_amt_dict().items()))


def structure_family(formula: str, spacegroup: int) -> str:
    """Return the prototype family of a compound (one of :data:`FAMILIES`).

    Args:
        formula: chemical formula (any order; reduced internally).
        spacegroup: international space-group number (1–230; -1 or 0: unknown → ``other``).
    """
    try:
        amounts = sorted(n for _, n in _amounts(formula))
    except (ValueError, KeyError):
        return "other"
    sg = int(spacegroup)
    if amounts == [1.0, 1.0]:
        return _AB.get(sg, "other")
    if amounts == [1.0, 1.0, 1.0] and sg == 216:
        return "half-Heusler"
    return "other"


def anion(formula: str) -> str:
    """Return the anion of a compound for leave-one-anion-out hold-outs.

    The element of the highest main group among groups 14–17 (halogens, chalcogens, pnictogens,
    then tetrels: PbTe → Te, GaAs → As, TiNiSn → Sn); ties go to the more electronegative one.
    A compound without such an element gives its most electronegative element.

    Raises:
        ValueError: the formula cannot be parsed.
    """
    from pymatgen.core import Element

    elements = [Element(el) for el, _ in _amounts(formula)]

    def chi(el: Element) -> float:
        x = el.X
        return float(x) if x == x else 0.0  # NaN (noble gases) sorts last

    main = [el for el in elements if el.group in (14, 15, 16, 17) and not el.is_transition_metal]
    if main:
        return str(max(main, key=lambda el: (el.group, chi(el))))
    return str(max(elements, key=chi))
