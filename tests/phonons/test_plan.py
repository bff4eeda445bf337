"""Cost of a phono3py κ calculation counted before any force call."""

from __future__ import annotations

import dataclasses

from pymatgen.core import Lattice, Structure

from kappaflow.phonons.conductivity import KappaSettings
from kappaflow.phonons.plan import budget_reason, force_plan
from kappaflow.structure.crystal import CrystalArrays


def _nacl() -> CrystalArrays:
    a = 5.64 / 2
    lattice = Lattice([[0, a, a], [a, 0, a], [a, a, 0]])
    return CrystalArrays.from_structure(
        Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    )


def test_rocksalt_counts_and_the_pair_cutoff_changes_them():
    settings = KappaSettings(fc3_min_length=7.0, fc2_min_length=12.0, cutoff_pair_distance=3.0)
    plan = force_plan(_nacl(), settings)
    # 2-atom primitive cell: 3x3x3 (54 atoms) for fc3, 4x4x4 (128) for fc2; rocksalt has two
    # symmetry-distinct displacements for fc2 and tens of pair displacements for fc3
    assert (plan.fc3_atoms, plan.fc2_atoms, plan.n_fc2) == (54, 128, 2)
    assert 10 <= plan.n_fc3 <= 60
    assert plan.force_atoms == plan.n_fc3 * 54 + 2 * 128
    wider = force_plan(_nacl(), dataclasses.replace(settings, cutoff_pair_distance=4.5))
    assert wider.n_fc3 > plan.n_fc3  # more pairs within the cutoff: more force calls


def test_supercells_over_the_atom_guards_are_not_displaced():
    plan = force_plan(_nacl(), KappaSettings(fc3_min_length=7.0, max_fc3_atoms=20))
    assert plan.n_fc3 == plan.n_fc2 == -1 and plan.fc3_atoms == 54


def test_budget_reason_names_the_budget_and_the_guards():
    settings = KappaSettings(fc3_min_length=7.0, fc2_min_length=12.0, cutoff_pair_distance=3.0)
    atoms = force_plan(_nacl(), settings).force_atoms
    assert budget_reason(_nacl(), settings, None, "x.max_force_atoms") == ""
    assert budget_reason(_nacl(), settings, atoms, "x.max_force_atoms") == ""
    reason = budget_reason(_nacl(), settings, atoms - 1, "phonons.kappa.max_force_atoms")
    assert reason.startswith(f"{atoms} atoms in ")
    assert reason.endswith(f"> phonons.kappa.max_force_atoms={atoms - 1} (CPU budget)")
    small = dataclasses.replace(settings, max_fc3_atoms=20)
    assert budget_reason(_nacl(), small, None, "k").startswith("supercells of 54 (fc3)")
