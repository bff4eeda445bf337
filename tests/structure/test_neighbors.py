from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from kappaflow.structure.neighbors import periodic_neighbors

CUTOFF = 6.5


def per_atom_distances(s: Structure, max_neighbors: int | None) -> list[np.ndarray]:
    c, _, d = periodic_neighbors(s.lattice.matrix, s.frac_coords, CUTOFF, max_neighbors)
    return [np.sort(d[c == i]) for i in range(len(s))]


def multiset_of_multisets(per_atom: list[np.ndarray]) -> list[tuple[float, ...]]:
    return sorted(tuple(np.round(d, 5)) for d in per_atom)


@pytest.mark.parametrize("k", [None, 12, 5])
def test_permutation_invariance(structure: Structure, k: int | None) -> None:
    perm = np.random.default_rng(0).permutation(len(structure))
    permuted = Structure(
        structure.lattice, [structure.species[p] for p in perm], structure.frac_coords[perm]
    )
    ref = per_atom_distances(structure, k)
    new = per_atom_distances(permuted, k)
    for new_i, old_i in enumerate(perm):
        np.testing.assert_allclose(new[new_i], ref[old_i], atol=1e-8)


@pytest.mark.parametrize("k", [None, 12])
def test_translation_invariance(structure: Structure, k: int | None) -> None:
    shift = np.array([0.313, -0.77, 1.41])  # fractional; also leaves atoms outside [0, 1)
    moved = Structure(structure.lattice, structure.species, structure.frac_coords + shift)
    for a, b in zip(per_atom_distances(structure, k), per_atom_distances(moved, k), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("k", [None, 12])
def test_supercell_invariance(structure: Structure, k: int | None) -> None:
    ref = per_atom_distances(structure, k)
    sup = per_atom_distances(structure * (2, 1, 1), k)
    assert multiset_of_multisets(sup) == multiset_of_multisets(ref + ref)


def test_matches_pymatgen_neighbor_list(structure: Structure) -> None:
    c, n, d = periodic_neighbors(structure.lattice.matrix, structure.frac_coords, CUTOFF)
    pc, pn, _, pd_ = structure.get_neighbor_list(CUTOFF)
    assert len(c) == len(pc)
    for i in range(len(structure)):
        np.testing.assert_allclose(np.sort(d[c == i]), np.sort(pd_[pc == i]), atol=1e-10)
    # neighbour species agree with pymatgen too
    z = np.array(structure.atomic_numbers)
    ours = sorted(zip(c.tolist(), z[n].tolist(), np.round(d, 6).tolist(), strict=True))
    theirs = sorted(zip(pc.tolist(), z[pn].tolist(), np.round(pd_, 6).tolist(), strict=True))
    assert ours == theirs


def test_output_sorted_and_typed(structure: Structure) -> None:
    c, n, d = periodic_neighbors(structure.lattice.matrix, structure.frac_coords, CUTOFF, 12)
    assert c.dtype == np.int64 and n.dtype == np.int64 and d.dtype == np.float64
    assert np.all(np.diff(c) >= 0)
    same = c[1:] == c[:-1]
    assert np.all(np.diff(d)[same] >= -1e-6)


@pytest.mark.parametrize("k", [1, 3, 12, 40])
def test_max_neighbors_keeps_k_nearest(structure: Structure, k: int) -> None:
    lat, frac = structure.lattice.matrix, structure.frac_coords
    c_all, _, d_all = periodic_neighbors(lat, frac, CUTOFF)
    c, _, d = periodic_neighbors(lat, frac, CUTOFF, k)
    for i in range(len(structure)):
        full = np.sort(d_all[c_all == i])
        kept = d[c == i]
        assert len(kept) == min(k, len(full))
        np.testing.assert_allclose(kept, full[: len(kept)], atol=1e-8)


def test_ties_broken_by_neighbor_index() -> None:
    # Simple cubic with 2 atoms: atom 0 has 6 equidistant images of itself at 3 Å and
    # 8 images of atom 1 at 2.598 Å (body centre).
    s = Structure(Lattice.cubic(3.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c, n, d = periodic_neighbors(s.lattice.matrix, s.frac_coords, 3.2, 10)
    assert list(n[c == 0]) == [1] * 8 + [0, 0]
    np.testing.assert_allclose(d[c == 0][:8], 3.0 * np.sqrt(3) / 2)
    np.testing.assert_allclose(d[c == 0][8:], 3.0)
    # deterministic: same call twice gives the same selection
    c2, n2, d2 = periodic_neighbors(s.lattice.matrix, s.frac_coords, 3.2, 10)
    assert np.array_equal(n, n2) and np.array_equal(c, c2)


def test_self_pair_excluded_but_self_images_kept() -> None:
    lat = np.eye(3) * 3.0
    c, n, d = periodic_neighbors(lat, np.zeros((1, 3)), 3.5)
    assert len(c) == 6  # the 6 face-sharing images of the atom itself
    assert np.all(n == 0) and np.allclose(d, 3.0)


def test_coincident_distinct_atoms_reported() -> None:
    lat = np.eye(3) * 4.0
    frac = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    c, n, d = periodic_neighbors(lat, frac, 2.0)
    pairs = {(int(i), int(j)) for i, j, dist in zip(c, n, d, strict=True) if dist < 1e-9}
    assert pairs == {(0, 1), (1, 0)}
    # zero distance sorts first for each centre, even with k = 1
    c1, n1, d1 = periodic_neighbors(lat, frac, 2.0, 1)
    assert list(c1) == [0, 1] and list(n1) == [1, 0] and np.allclose(d1, 0.0)


def test_isolated_atom_and_bad_args() -> None:
    c, n, d = periodic_neighbors(np.eye(3) * 10.0, np.zeros((1, 3)), 5.0)
    assert len(c) == len(n) == len(d) == 0
    with pytest.raises(ValueError):
        periodic_neighbors(np.eye(3), np.zeros((1, 3)), 0.0)
    with pytest.raises(ValueError):
        periodic_neighbors(np.eye(3), np.zeros((1, 3)), 1.0, 0)


def _full_then_cut(
    lattice: np.ndarray, frac: np.ndarray, cutoff: float, k: int
) -> tuple[np.ndarray, ...]:
    c, n, d = periodic_neighbors(lattice, frac, cutoff)
    rank = np.concatenate([np.arange(m) for m in np.bincount(c, minlength=len(frac))])
    keep = rank < k
    return c[keep], n[keep], d[keep]


@pytest.mark.parametrize("k", [1, 4, 12, 30])
def test_truncation_identical_to_full_search(structure: Structure, k: int) -> None:
    lat, frac = structure.lattice.matrix, structure.frac_coords
    got = periodic_neighbors(lat, frac, 8.0, k)
    ref = _full_then_cut(lat, frac, 8.0, k)
    for a, b in zip(got, ref, strict=True):
        assert np.array_equal(a, b)


def test_small_sphere_falls_back_for_sparse_atom(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dense 4x4x4 cluster plus one atom >= 6.5 Å away from it: the first (small-sphere) search
    # misses the lone atom's neighbours, so the full-cutoff search must be used.
    from kappaflow.structure import neighbors as nb

    radii: list[float] = []
    real_pairs = nb._pairs

    def spy(
        cart: np.ndarray, lattice: np.ndarray, radius: float, tol: float
    ) -> tuple[np.ndarray, ...]:
        radii.append(radius)
        return real_pairs(cart, lattice, radius, tol)

    grid = np.stack(np.meshgrid(*[np.arange(4) * 1.5] * 3, indexing="ij"), -1).reshape(-1, 3)
    lattice = np.eye(3) * 12.0
    frac = np.vstack([grid, [[8.25, 8.25, 8.25]]]) / 12.0
    monkeypatch.setattr(nb, "_pairs", spy)
    got = periodic_neighbors(lattice, frac, 8.0, 12)
    assert len(radii) == 2 and radii[0] < 8.0 and radii[1] == 8.0
    monkeypatch.undo()
    ref = _full_then_cut(lattice, frac, 8.0, 12)
    for a, b in zip(got, ref, strict=True):
        assert np.array_equal(a, b)
    assert np.sum(got[0] == 64) == 12
