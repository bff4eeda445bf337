"""Phonon descriptors of one crystal from a universal potential (Ju et al.'s feature property).

Per structure: an optional symmetry-constrained relaxation of cell and positions (ASE
``FixSymmetry`` + ``FrechetCellFilter``, FIRE), harmonic phonons by finite displacements
(phonopy, supercell at least ``supercell_min_length`` Å wide in every direction) at the relaxed
volume and at ``1 ± volume_strain`` (mode Grüneisen parameters by phonopy's finite difference),
and phono3py's joint density of states of three-phonon processes from the same harmonic force
constants. Every number below is on a Γ-centred ``mesh³`` q-point grid of the relaxed cell.

Descriptors (:data:`DESCRIPTOR_COLUMNS`; frequencies in THz, 1 THz = 47.99 K):

* ``ph_freq_acoustic_max_thz``: highest frequency of the three acoustic branches;
  ``ph_theta_acoustic_k`` = h·that/k_B, Slack's acoustic Debye temperature θ_a (K).
* ``ph_freq_mean_thz``, ``ph_freq_max_thz``: mean and highest frequency of all branches.
* ``ph_v_acoustic_m_s``: mean group speed of the acoustic branches (m/s).
* ``ph_gruneisen_acoustic``: root mean square mode Grüneisen parameter of the acoustic branches;
  ``ph_gruneisen_cv``: RMS over all modes weighted by the mode heat capacity at ``temperature``;
  ``ph_gruneisen_thermal``: the signed heat-capacity-weighted mean (thermodynamic Grüneisen γ).
  Modes below 5 % of the highest frequency (acoustic modes at and next to Γ) get no weight.
* ``ph_p3_thz_inv``: three-phonon scattering phase space: phono3py's joint DOS of both process
  classes (ω = ω' + ω'' and ω = ω' − ω'') at each mode's own frequency, averaged over modes
  (THz⁻¹; larger = more decay channels = lower κ).
* ``ph_log10_kappa_slack``: log10 of the Slack (Morelli & Slack 2006) estimate
  κ = A M̄ θ_a³ δ n^{1/3} / (γ² T), A = 2.43e-6 / (1 − 0.514/γ + 0.228/γ²), M̄ in amu,
  δ = (V/atom)^{1/3} in Å, n atoms per primitive cell, γ = ``ph_gruneisen_acoustic`` (κ in W/m/K).
* ``ph_mass_amu`` (mean atomic mass), ``ph_volume_per_atom_a3`` (relaxed, Å³),
  ``ph_relax_volume_change`` (relaxed / input volume − 1), ``ph_min_freq_thz`` (lowest
  frequency; negative = imaginary).

Flags (recorded, never dropped): ``imaginary`` (a frequency below ``imaginary_threshold_thz``:
the potential finds the structure dynamically unstable; Grüneisen and Slack values then mean
little), ``relax_unconverged`` (``relax_steps`` reached), ``symmetry_changed`` (space group
after relaxation differs). A structure whose supercell would exceed ``max_supercell_atoms`` is not
computed at all (:class:`PhononError`): it would exhaust the machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kappaflow.structure.crystal import CrystalArrays

#: THz -> K (h / k_B · 1e12).
THZ_TO_K = 47.99243073366221
#: Modes below this fraction of the highest frequency get no weight in Grüneisen averages.
GRUNEISEN_MIN_FRACTION = 0.05
#: Group velocity THz·Å -> m/s.
THZ_ANGSTROM_TO_M_S = 100.0

DESCRIPTOR_COLUMNS: tuple[str, ...] = (
    "ph_freq_acoustic_max_thz",
    "ph_theta_acoustic_k",
    "ph_freq_mean_thz",
    "ph_freq_max_thz",
    "ph_v_acoustic_m_s",
    "ph_gruneisen_acoustic",
    "ph_gruneisen_cv",
    "ph_gruneisen_thermal",
    "ph_p3_thz_inv",
    "ph_log10_kappa_slack",
    "ph_mass_amu",
    "ph_volume_per_atom_a3",
    "ph_relax_volume_change",
    "ph_min_freq_thz",
)

FLAGS: tuple[str, ...] = ("imaginary", "relax_unconverged", "symmetry_changed")


class PhononError(RuntimeError):
    """The descriptors of a structure cannot be computed; the message is the reason."""


@dataclass(frozen=True)
class PhononSettings:
    """How phonons are computed (``conf/phonons``).

    Attributes:
        supercell_min_length: minimum width of the supercell in every direction (Å).
        max_supercell_atoms: larger supercells are refused (memory and time guard).
        displacement: finite-displacement amplitude (Å).
        volume_strain: fractional volume change of the two strained cells for Grüneisen.
        mesh: q-points per reciprocal axis (Γ-centred).
        relax: relax cell and positions first (symmetry kept).
        relax_fmax: force convergence of the relaxation (eV/Å).
        relax_steps: FIRE step limit.
        imaginary_threshold_thz: a frequency below this (THz) flags ``imaginary``.
        temperature: temperature of the heat-capacity weights and the Slack estimate (K).
    """

    supercell_min_length: float = 9.0
    max_supercell_atoms: int = 256
    displacement: float = 0.01
    volume_strain: float = 0.01
    mesh: int = 8
    relax: bool = True
    relax_fmax: float = 0.01
    relax_steps: int = 200
    imaginary_threshold_thz: float = -0.1
    temperature: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (part of every cache key)."""
        return asdict(self)


@dataclass
class PhononResult:
    """Descriptors of one structure.

    Attributes:
        values: :data:`DESCRIPTOR_COLUMNS` -> value (units in the module docstring).
        flags: the :data:`FLAGS` that apply.
        n_primitive: atoms in the primitive cell phonopy found.
        n_supercell: atoms in the supercell.
        seconds: wall time.
    """

    values: dict[str, float]
    flags: list[str] = field(default_factory=list)
    n_primitive: int = 0
    n_supercell: int = 0
    seconds: float = 0.0


def supercell_matrix(cell: np.ndarray, min_length: float) -> np.ndarray:
    """Diagonal supercell multiples so that every perpendicular width is ≥ ``min_length`` Å."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell)))
    widths = [
        volume / float(np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])))
        for i in range(3)
    ]
    return np.diag([max(1, int(np.ceil(min_length / w - 1e-6))) for w in widths])


def slack_kappa(
    mass_amu: float, theta_a: float, delta: float, n_atoms: int, gamma: float, temperature: float
) -> float:
    """Slack's κ (W/m/K) in the Morelli–Slack form (see the module docstring)."""
    gamma = max(abs(gamma), 1e-3)
    a = 2.43e-6 / (1.0 - 0.514 / gamma + 0.228 / gamma**2)
    return a * mass_amu * theta_a**3 * delta * n_atoms ** (1 / 3) / (gamma**2 * temperature)


def _spacegroup(atoms: Any) -> int:
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    data = spglib.get_symmetry_dataset(cell, symprec=1e-3)
    return int(data.number) if data is not None else 0


def _relax(atoms: Any, calculator: Any, settings: PhononSettings) -> tuple[Any, bool]:
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
    converged = FIRE(FrechetCellFilter(atoms), logfile=None).run(
        fmax=settings.relax_fmax, steps=settings.relax_steps
    )
    atoms.set_constraint(None)
    return atoms, bool(converged)


def _phonons(atoms: Any, calculator: Any, matrix: np.ndarray, displacement: float) -> Any:
    from ase import Atoms
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(
        numbers=atoms.numbers, cell=atoms.cell[:], scaled_positions=atoms.get_scaled_positions()
    )
    ph = Phonopy(unit, supercell_matrix=matrix, primitive_matrix="auto")
    ph.generate_displacements(distance=displacement)
    forces = []
    for sc in ph.supercells_with_displacements:
        displaced = Atoms(
            numbers=sc.numbers, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True
        )
        displaced.calc = calculator
        forces.append(np.asarray(displaced.get_forces(), dtype=np.float64))
    ph.forces = np.asarray(forces)
    ph.produce_force_constants()
    ph.symmetrize_force_constants()  # translational invariance: acoustic modes at Γ go to 0
    return ph


def _phase_space(ph: Any, mesh: int) -> float:
    """Mean over modes of phono3py's two-class joint DOS at the mode's frequency (THz⁻¹)."""
    from phono3py.api_jointdos import Phono3pyJointDos
    from phonopy.phonon.grid import get_ir_grid_points

    # 51 frequency points (tetrahedron method, interpolated to each mode's frequency) give the
    # same mean as phono3py's default 201 to 1e-3 relative (AgI: 27.906 vs 27.910), 3.4x faster.
    jdos = Phono3pyJointDos(
        ph.supercell,
        ph.primitive,
        ph.force_constants,
        mesh=[mesh] * 3,
        sigmas=[None],
        num_frequency_points=51,
    )
    grid = jdos.grid
    ir_points, weights, _ = get_ir_grid_points(grid)
    total, count = 0.0, 0.0
    for gp, weight in zip(grid.grg2bzg[ir_points], weights, strict=True):
        jdos.run([gp])
        points = np.asarray(jdos.frequency_points)
        table = np.asarray(jdos.joint_dos)[0, 0]  # [frequency point, class]
        freqs = np.asarray(jdos._jdos.phonons.frequencies[gp])  # noqa: SLF001 - no public getter
        freqs = freqs[freqs > 1e-2]
        both = np.interp(freqs, points, table[:, 0]) + np.interp(freqs, points, table[:, 1])
        total += float(weight) * float(both.sum())
        count += float(weight) * len(freqs)
    return total / count if count else float("nan")


def _heat_capacity_weights(freqs: np.ndarray, temperature: float) -> np.ndarray:
    x = np.clip(freqs, 1e-3, None) * THZ_TO_K / temperature
    return x**2 * np.exp(x) / np.expm1(x) ** 2


def phonon_descriptors(
    crystal: CrystalArrays, calculator: Any, settings: PhononSettings | None = None
) -> PhononResult:
    """Compute the descriptors of one crystal (see the module docstring).

    Args:
        crystal: the structure (Å, fractional coordinates).
        calculator: an ASE calculator (:func:`kappaflow.phonons.potential.load_calculator`).
        settings: :class:`PhononSettings`; defaults when None.

    Returns:
        :class:`PhononResult` (flags recorded, values finite unless a step had none to give).

    Raises:
        PhononError: the supercell would be too large, or the potential failed; the message says
            which.
    """
    from phonopy.api_gruneisen import PhonopyGruneisen

    settings = settings or PhononSettings()
    start = time.perf_counter()
    atoms = crystal.to_ase()
    matrix = supercell_matrix(atoms.cell[:], settings.supercell_min_length)
    n_super = int(round(abs(np.linalg.det(matrix)))) * len(atoms)
    if n_super > settings.max_supercell_atoms:
        raise PhononError(
            f"supercell of {n_super} atoms (at least {settings.supercell_min_length:g} Å wide) "
            f"exceeds max_supercell_atoms={settings.max_supercell_atoms}"
        )
    flags: list[str] = []
    volume_in = atoms.get_volume()
    try:
        if settings.relax:
            sg_before = _spacegroup(atoms)
            atoms, converged = _relax(atoms, calculator, settings)
            if not converged:
                flags.append("relax_unconverged")
            if _spacegroup(atoms) != sg_before:
                flags.append("symmetry_changed")
        phonons = {}
        for scale in (1.0 - settings.volume_strain, 1.0, 1.0 + settings.volume_strain):
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] * scale ** (1 / 3), scale_atoms=True)
            phonons[scale] = _phonons(strained, calculator, matrix, settings.displacement)
    except (RuntimeError, ValueError, FloatingPointError) as err:
        raise PhononError(f"potential or phonopy failed: {err}") from err
    ph = phonons[1.0]
    mesh = [settings.mesh] * 3
    ph.run_mesh(mesh, is_gamma_center=True, with_group_velocities=True)
    m = ph.get_mesh_dict()
    weights = np.asarray(m["weights"], dtype=np.float64)
    freqs = np.asarray(m["frequencies"], dtype=np.float64)  # [q, band], THz
    speeds = np.linalg.norm(np.asarray(m["group_velocities"]), axis=-1)  # [q, band], THz·Å
    gru = PhonopyGruneisen(
        ph, phonons[1.0 + settings.volume_strain], phonons[1.0 - settings.volume_strain]
    )
    gru.set_mesh(mesh, is_gamma_center=True)
    gru_mesh = gru.get_mesh()
    assert gru_mesh is not None
    gamma = np.asarray(gru_mesh[4], dtype=np.float64)  # [q, band]; inf/NaN where ω -> 0
    wq = weights[:, None] / weights.sum()
    n_bands = freqs.shape[1]
    acoustic = np.zeros(n_bands, dtype=bool)
    acoustic[:3] = True
    f_ac_max = float(freqs[:, :3].max())
    theta_a = f_ac_max * THZ_TO_K
    # Grüneisen parameters of modes near zero frequency (acoustic modes at and next to Γ) are
    # 0/0 finite differences: they get no weight.
    soft = (freqs > GRUNEISEN_MIN_FRACTION * float(freqs.max())) & np.isfinite(gamma)
    gamma = np.where(soft, gamma, 0.0)
    ac_w = (np.broadcast_to(wq, freqs.shape) * soft)[:, acoustic]
    gamma_ac = float(np.sqrt((ac_w * gamma[:, acoustic] ** 2).sum() / ac_w.sum()))
    cv = _heat_capacity_weights(freqs, settings.temperature) * wq * soft
    gamma_cv = float(np.sqrt((cv * gamma**2).sum() / cv.sum()))
    gamma_thermal = float((cv * gamma).sum() / cv.sum())
    prim = ph.primitive
    n_prim = len(prim)
    masses = np.asarray(prim.masses, dtype=np.float64)
    volume_per_atom = float(prim.volume) / n_prim
    kappa_slack = slack_kappa(
        float(masses.mean()),
        theta_a,
        volume_per_atom ** (1 / 3),
        n_prim,
        gamma_ac,
        settings.temperature,
    )
    values = {
        "ph_freq_acoustic_max_thz": f_ac_max,
        "ph_theta_acoustic_k": theta_a,
        "ph_freq_mean_thz": float((wq * freqs).sum() / n_bands),
        "ph_freq_max_thz": float(freqs.max()),
        "ph_v_acoustic_m_s": float((wq * speeds)[:, acoustic].sum() / 3) * THZ_ANGSTROM_TO_M_S,
        "ph_gruneisen_acoustic": gamma_ac,
        "ph_gruneisen_cv": gamma_cv,
        "ph_gruneisen_thermal": gamma_thermal,
        "ph_p3_thz_inv": _phase_space(ph, settings.mesh),
        "ph_log10_kappa_slack": float(np.log10(kappa_slack)),
        "ph_mass_amu": float(masses.mean()),
        "ph_volume_per_atom_a3": volume_per_atom,
        "ph_relax_volume_change": float(atoms.get_volume() / volume_in - 1.0),
        "ph_min_freq_thz": float(freqs.min()),
    }
    if values["ph_min_freq_thz"] < settings.imaginary_threshold_thz:
        flags.append("imaginary")
    return PhononResult(
        values=values,
        flags=flags,
        n_primitive=n_prim,
        n_supercell=n_super,
        seconds=time.perf_counter() - start,
    )
