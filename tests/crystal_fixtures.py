"""Crystal fixtures (rocksalt NaCl, diamond Si, a triclinic cell) for structure and graph tests."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure


@cache
def rocksalt_nacl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


@cache
def diamond_si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


@cache
def triclinic_cato() -> Structure:
    """Low-symmetry P1 cell with 3 species and no two atoms closer than 1.5 Å."""
    rng = np.random.default_rng(7)
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 78.0, 85.0, 97.0)
    species = ["Ca", "Ti", "O", "O", "O"]
    while True:
        frac = rng.random((len(species), 3))
        s = Structure(lattice, species, frac)
        dm = s.distance_matrix + np.eye(len(s)) * 10
        if dm.min() > 1.5:
            return s


STRUCTURES = {"NaCl": rocksalt_nacl, "Si": diamond_si, "CaTiO3-P1": triclinic_cato}


@pytest.fixture(params=sorted(STRUCTURES))
def structure(request: pytest.FixtureRequest) -> Structure:
    return STRUCTURES[request.param]().copy()


@pytest.fixture
def triclinic() -> Structure:
    return triclinic_cato().copy()


@pytest.fixture(scope="session")
def structure_builders() -> dict[str, object]:
    return {name: (lambda b=builder: b().copy()) for name, builder in STRUCTURES.items()}
