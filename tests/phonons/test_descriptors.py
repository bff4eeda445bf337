"""Phonon descriptors of known crystals against physically known ranges (SevenNet-0, CPU).

Diamond Si: acoustic Debye temperature θ_a ≈ 400-500 K, acoustic Grüneisen ≈ 1, sound speeds of
km/s, Slack κ of order 10²  W/m/K. Rocksalt NaCl: softer (θ_a ≈ 200 K), more anharmonic
(γ ≈ 1.5-2.5), Slack κ of a few W/m/K. fcc Si (unrelaxed, dynamically unstable) has imaginary
modes and must be flagged, never dropped.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_fixtures import diamond_si, rocksalt_nacl
from kappaflow.phonons.descriptors import (
    DESCRIPTOR_COLUMNS,
    PhononError,
    PhononSettings,
    phonon_descriptors,
    slack_kappa,
    supercell_matrix,
)
from kappaflow.structure.crystal import CrystalArrays

FAST = PhononSettings(mesh=6)


@pytest.fixture(scope="module")
def calculator():
    from kappaflow.phonons.potential import load_calculator

    return load_calculator("sevennet-0", "cpu")


@pytest.fixture(scope="module")
def si(calculator):
    return phonon_descriptors(CrystalArrays.from_structure(diamond_si()), calculator, FAST)


@pytest.fixture(scope="module")
def nacl(calculator):
    return phonon_descriptors(CrystalArrays.from_structure(rocksalt_nacl()), calculator, FAST)


def test_diamond_si_in_known_ranges(si):
    v = si.values
    assert set(v) == set(DESCRIPTOR_COLUMNS)
    assert all(np.isfinite(x) for x in v.values())
    assert si.flags == []
    assert si.n_primitive == 2
    assert v["ph_min_freq_thz"] > -0.1
    assert 11.0 < v["ph_freq_max_thz"] < 17.0  # experiment: Raman mode 15.6 THz
    assert 350 < v["ph_theta_acoustic_k"] < 600
    assert 0.5 < v["ph_gruneisen_acoustic"] < 2.0
    assert 1500 < v["ph_v_acoustic_m_s"] < 9000
    assert 1.0 < v["ph_log10_kappa_slack"] < 3.0
    assert abs(v["ph_relax_volume_change"]) < 0.05  # PBE-like potential: a few % too large
    assert v["ph_p3_thz_inv"] > 0


def test_nacl_softer_and_more_anharmonic_than_si(si, nacl):
    a, b = si.values, nacl.values
    assert nacl.flags == []
    assert 150 < b["ph_theta_acoustic_k"] < 300
    assert 1.2 < b["ph_gruneisen_acoustic"] < 3.0
    assert -0.5 < b["ph_log10_kappa_slack"] < 1.5
    assert b["ph_theta_acoustic_k"] < a["ph_theta_acoustic_k"]
    assert b["ph_gruneisen_acoustic"] > a["ph_gruneisen_acoustic"]
    assert b["ph_log10_kappa_slack"] < a["ph_log10_kappa_slack"] - 0.8


def test_unstable_structure_is_flagged_not_dropped(calculator):
    fcc_si = Structure(
        Lattice.cubic(3.9), ["Si"] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )
    result = phonon_descriptors(
        CrystalArrays.from_structure(fcc_si), calculator, PhononSettings(mesh=4, relax=False)
    )
    assert "imaginary" in result.flags
    assert result.values["ph_min_freq_thz"] < -1.0


def test_too_large_supercell_is_refused_with_reason(calculator):
    big = Structure(Lattice.cubic(5.43), ["Si"] * 8, diamond_si().frac_coords)
    with pytest.raises(PhononError, match="max_supercell_atoms=16"):
        phonon_descriptors(
            CrystalArrays.from_structure(big), calculator, PhononSettings(max_supercell_atoms=16)
        )


def test_supercell_matrix_reaches_min_length():
    hexagonal = Lattice.hexagonal(3.2, 5.2).matrix
    m = supercell_matrix(hexagonal, 9.0)
    assert list(np.diag(m)) == [4, 4, 2]  # widths 2.77, 2.77, 5.2 Å
    assert list(np.diag(supercell_matrix(np.eye(3) * 9.0, 9.0))) == [1, 1, 1]


def test_slack_formula_hand_computed():
    # A = 2.43e-6 / (1 - 0.514/2 + 0.228/4) = 3.0375e-6; κ = A·M·θ³·δ·n^(1/3) / (γ²·T)
    a = 2.43e-6 / (1 - 0.257 + 0.057)
    expected = a * 50.0 * 300.0**3 * 3.0 * 2 ** (1 / 3) / (4.0 * 300.0)
    assert slack_kappa(50.0, 300.0, 3.0, 2, 2.0, 300.0) == pytest.approx(expected, rel=1e-12)
