"""phono3py κ_L (RTA and LBTE, 300 K) from SevenNet-0 force constants on a CPU, with tiny settings.

Physical expectations (PBE phono3py, phonondb): diamond Si ≈ 110-140 W/m/K, rocksalt NaCl ≈ 6-8.
The tiny settings here (64-atom supercells, nearest-neighbour fc3 pairs, a 6³ q-mesh) and the
potential's softening shift those by tens of %, so the bounds are an order of magnitude wide
around them and the test that matters is the ordering Si ≫ NaCl. fc3-free checks (size guard,
settings) run before any force call.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_fixtures import diamond_si, rocksalt_nacl
from kappaflow.phonons.conductivity import (
    KAPPA_FLAGS,
    KappaResult,
    KappaSettings,
    _solution,
    displaced_phono3py,
    lbte_matrix_gb,
    phono3py_kappa,
    supercells,
)
from kappaflow.phonons.descriptors import PhononError, supercell_matrix
from kappaflow.structure.crystal import CrystalArrays

FCC_SITES = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
#: Unrelaxed fcc Si (unstable): 6 Å supercells, nearest-neighbour fc3 pairs; length-based
#: q-mesh |b| = √3/3.9 Å⁻¹ of the 1-atom fcc primitive cell × 9 Å -> 4 points per axis.
FCC_SETTINGS = KappaSettings(
    fc2_min_length=6.0, fc3_min_length=6.0, cutoff_pair_distance=3.0, mesh_length=9.0, relax=False
)

#: 64-atom fc2 = fc3 supercell of the 8-atom cubic cells, nearest-neighbour pairs, 6³ q-points.
TINY = KappaSettings(
    fc2_min_length=7.0, fc3_min_length=7.0, cutoff_pair_distance=3.0, mesh=6, relax_fmax=0.01
)


@pytest.fixture(scope="module")
def calculator():
    from kappaflow.phonons.potential import load_calculator

    return load_calculator("sevennet-0", "cpu")


@pytest.fixture(scope="module")
def si(calculator) -> KappaResult:
    return phono3py_kappa(CrystalArrays.from_structure(diamond_si()), calculator, TINY)


@pytest.fixture(scope="module")
def nacl(calculator) -> KappaResult:
    return phono3py_kappa(CrystalArrays.from_structure(rocksalt_nacl()), calculator, TINY)


class _NoForces:
    """A calculator that fails the test if anything asks it for a force."""

    def __getattr__(self, name: str):
        raise AssertionError(f"calculator used ({name}) before the size guard")


def test_diamond_si_kappa_is_high(si):
    assert si.flags == []
    assert si.n_primitive == 2
    assert si.n_fc3_atoms == 64 and si.n_fc2_atoms == 64
    assert si.mesh == [6, 6, 6]
    assert 0 < si.n_fc3_displacements < 50  # nearest-neighbour pairs only (111 without cutoff)
    assert si.min_freq_thz > -0.1
    assert 40.0 < si.kappa < 500.0
    xx, yy, zz, yz, xz, xy = si.kappa_tensor
    assert xx == pytest.approx(yy, rel=1e-6) and yy == pytest.approx(zz, rel=1e-6)  # cubic
    assert max(abs(yz), abs(xz), abs(xy)) < 1e-6 * xx
    assert si.kappa == pytest.approx((xx + yy + zz) / 3)
    assert si.seconds > 0


def test_nacl_kappa_is_low_and_far_below_si(si, nacl):
    assert nacl.flags == []
    assert nacl.n_primitive == 2
    assert 1.0 < nacl.kappa < 30.0
    assert nacl.kappa < si.kappa / 5


def test_unstable_structure_is_flagged_not_dropped(calculator):
    fcc_si = Structure(Lattice.cubic(3.9), ["Si"] * 4, FCC_SITES)
    settings = FCC_SETTINGS
    result = phono3py_kappa(CrystalArrays.from_structure(fcc_si), calculator, settings)
    assert result.mesh == [4, 4, 4]
    assert "imaginary" in result.flags
    assert result.min_freq_thz < settings.imaginary_threshold_thz
    assert set(result.flags) <= set(KAPPA_FLAGS)
    assert len(result.kappa_tensor) == 6  # kept: κ computed (over the stable modes) or NaN-flagged
    assert math.isfinite(result.kappa) or "nonfinite" in result.flags


def test_lbte_solution_is_at_least_the_rta(calculator, nacl):
    crystal = CrystalArrays.from_structure(rocksalt_nacl())
    lbte = phono3py_kappa(crystal, calculator, replace(TINY, method="lbte"))
    assert nacl.method == "rta" and lbte.method == "lbte" and lbte.flags == []
    # The direct solution adds the normal processes' repopulation: κ up, not by orders.
    assert nacl.kappa * 0.98 < lbte.kappa < nacl.kappa * 2.0


def test_lbte_above_the_memory_limit_falls_back_to_the_rta(calculator):
    one_atom_fcc = Structure(Lattice.cubic(3.9), ["Si"] * 4, FCC_SITES).get_primitive_structure()
    settings = replace(FCC_SETTINGS, method="lbte", lbte_max_gb=1e-9)
    result = phono3py_kappa(CrystalArrays.from_structure(one_atom_fcc), calculator, settings)
    assert result.method == "rta" and "rta_fallback" in result.flags


class _Conductivity:
    """What phono3py's LBTE object holds: ``kappa`` and ``kappa_RTA``, [sigma, T, 6] W/m/K."""

    def __init__(self, lbte: list[float], rta: list[float]) -> None:
        self.kappa = np.array([[lbte]])
        self.kappa_RTA = np.array([[rta]])


def test_unphysical_lbte_tensor_is_replaced_by_the_rta_of_the_same_run():
    rta = [138.4, 138.4, 138.4, 0.0, 0.0, 0.0]
    for bad in ([-263.9, -263.9, -263.9, 0, 0, 0], [5.0, 5.0, np.nan, 0, 0, 0], [0.0] * 6):
        tensor, method, flags = _solution(_Conductivity(bad, rta), "lbte")
        assert method == "rta" and flags == ["lbte_unphysical"] and list(tensor) == rta
        assert "lbte_unphysical" in KAPPA_FLAGS
    good = [150.0, 150.0, 150.0, 0, 0, 0]
    tensor, method, flags = _solution(_Conductivity(good, rta), "lbte")
    assert method == "lbte" and flags == [] and list(tensor) == good
    # the RTA object has no kappa_RTA: an RTA run never looks for it
    tensor, method, flags = _solution(_Conductivity(good, rta), "rta")
    assert method == "rta" and flags == [] and list(tensor) == good


def test_lbte_matrix_size_by_hand():
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64)  # 2-atom fcc primitive cell
    ph3 = displaced_phono3py(atoms, supercells(atoms, TINY), TINY)
    ph3.mesh_numbers = [6, 6, 6]
    # 16 irreducible points of a Γ-centred 6³ fcc mesh under O_h; 6 bands × 3 directions.
    assert lbte_matrix_gb(ph3) == pytest.approx(8 * (16 * 6 * 3) ** 2 / 1e9)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        KappaSettings(method="wigner")


class _BrokenPotential:
    """An ASE-style calculator whose every call fails (an element the potential cannot do)."""

    def get_forces(self, atoms=None):
        raise RuntimeError("no parameters for this element")

    get_stress = get_potential_energy = get_forces


def test_potential_failure_is_a_phonon_error_with_the_reason():
    crystal = CrystalArrays.from_structure(rocksalt_nacl())
    with pytest.raises(PhononError, match="potential or phonopy failed: no parameters"):
        phono3py_kappa(crystal, _BrokenPotential(), TINY)


def test_too_large_fc3_supercell_is_refused_before_any_force_call():
    crystal = CrystalArrays.from_structure(rocksalt_nacl())  # 8 atoms, 5.64 Å cube
    settings = KappaSettings(fc3_min_length=12.0)  # 3×3×3 × 8 = 216 atoms > 128
    with pytest.raises(PhononError, match=r"216 atoms.*max_fc3_atoms=128"):
        phono3py_kappa(crystal, _NoForces(), settings)


def test_too_large_fc2_supercell_is_refused_before_any_force_call():
    crystal = CrystalArrays.from_structure(rocksalt_nacl())
    settings = KappaSettings(fc2_min_length=24.0)  # 5×5×5 × 8 = 1000 atoms > 512
    with pytest.raises(PhononError, match=r"1000 atoms.*max_fc2_atoms=512"):
        phono3py_kappa(crystal, _NoForces(), settings)


def test_settings_round_trip_and_defaults():
    settings = KappaSettings()
    d = settings.to_dict()
    assert KappaSettings(**d) == settings
    assert d["temperature"] == 300.0
    assert settings.fc3_min_length < settings.fc2_min_length
    assert settings.max_fc3_atoms == 128
    # Default supercells of the 2-atom-primitive test crystals stay within the guards.
    for structure in (diamond_si(), rocksalt_nacl()):
        cell = CrystalArrays.from_structure(structure)
        n3 = round(abs(np.linalg.det(supercell_matrix(cell.lattice, settings.fc3_min_length))))
        assert n3 * cell.n_sites <= settings.max_fc3_atoms
