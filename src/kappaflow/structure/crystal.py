"""A compact crystal representation: lattice + atomic numbers + fractional coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure


@dataclass(frozen=True)
class CrystalArrays:
    """An ordered periodic crystal as plain arrays.

    Attributes:
        lattice: [3, 3] lattice vectors as rows, Å (pymatgen convention).
        numbers: [n] atomic numbers (int64).
        frac_coords: [n, 3] fractional coordinates.
    """

    lattice: np.ndarray
    numbers: np.ndarray
    frac_coords: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "lattice", np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        )
        object.__setattr__(self, "numbers", np.asarray(self.numbers, dtype=np.int64).reshape(-1))
        object.__setattr__(
            self, "frac_coords", np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        )
        if len(self.numbers) != len(self.frac_coords):
            raise ValueError(
                f"{len(self.numbers)} atomic numbers but {len(self.frac_coords)} coordinate rows"
            )

    @property
    def n_sites(self) -> int:
        """Number of sites in the cell."""
        return int(len(self.numbers))

    @property
    def volume(self) -> float:
        """Signed cell volume in Å^3 (negative for a left-handed basis)."""
        return float(np.linalg.det(self.lattice))

    @property
    def cart_coords(self) -> np.ndarray:
        """[n, 3] Cartesian coordinates in Å."""
        return self.frac_coords @ self.lattice

    def to_ase(self) -> Any:
        """Return the crystal as a periodic ``ase.Atoms`` (cell and positions in Å)."""
        from ase import Atoms

        return Atoms(
            numbers=self.numbers, cell=self.lattice, scaled_positions=self.frac_coords, pbc=True
        )

    def to_structure(self) -> Structure:
        """Return the equivalent pymatgen ``Structure``."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.numbers.tolist(), self.frac_coords)

    @classmethod
    def from_structure(cls, structure: Structure) -> CrystalArrays:
        """Build from an *ordered* pymatgen ``Structure`` (raises ``ValueError`` if disordered)."""
        if not structure.is_ordered:
            raise ValueError(
                "structure is disordered (partial occupancy); cannot make CrystalArrays"
            )
        return cls(
            lattice=structure.lattice.matrix,
            numbers=np.array([site.specie.Z for site in structure], dtype=np.int64),
            frac_coords=structure.frac_coords,
        )

    def to_row(self) -> dict[str, list[float] | list[int]]:
        """Flatten to the parquet columns ``lattice`` (9), ``numbers`` (n), ``frac_coords`` (3n)."""
        return {
            "lattice": self.lattice.reshape(-1).tolist(),
            "numbers": self.numbers.tolist(),
            "frac_coords": self.frac_coords.reshape(-1).tolist(),
        }

    @classmethod
    def from_row(cls, lattice: object, numbers: object, frac_coords: object) -> CrystalArrays:
        """Inverse of :meth:`to_row` (accepts lists or numpy arrays as read from parquet)."""
        return cls(
            lattice=np.asarray(lattice, dtype=np.float64),
            numbers=np.asarray(numbers, dtype=np.int64),
            frac_coords=np.asarray(frac_coords, dtype=np.float64),
        )
