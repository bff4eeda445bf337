"""Lattice thermal conductivity κ_L of one crystal: phono3py RTA / LBTE with a universal potential.

The recipe of the Matbench Discovery κ_SRME benchmark (Póta et al., arXiv:2408.00755), scaled
down for a CPU budget:

1. The cell is symmetrized (``ase.spacegroup.symmetrize.refine_symmetry``, symprec 1e-3, no
   rotation) and, unless ``relax=False``, relaxed with the symmetry kept (ASE ``FixSymmetry`` +
   ``FrechetCellFilter``, FIRE; :func:`kappaflow.phonons.descriptors._relax`).
2. ``Phono3py(unitcell, supercell_matrix=fc3, primitive_matrix="auto",
   phonon_supercell_matrix=fc2)``: both supercells are diagonal multiples of the *input* cell,
   at least ``fc3_min_length`` / ``fc2_min_length`` Å wide in every direction
   (:func:`~kappaflow.phonons.descriptors.supercell_matrix`, sized before the relaxation so the
   size guard runs before any force call).
3. Finite displacements of ``displacement`` Å (``generate_displacements``; pairs farther apart
   than ``cutoff_pair_distance`` Å get no second displacement and their fc3 elements are zero),
   forces of every displaced supercell from the ASE calculator, ``produce_fc2`` /
   ``produce_fc3`` with symmetrization (translational and permutation invariance).
4. Harmonic frequencies on the q-mesh: a frequency below ``imaginary_threshold_thz`` flags
   ``imaginary`` (the potential finds the structure dynamically unstable). κ is still computed:
   phono3py leaves modes below its cutoff frequency (1e-4 THz) out of the sums, so the number is
   finite but means little.
5. ``init_phph_interaction`` and ``run_thermal_conductivity`` (tetrahedron method, no isotope or
   boundary scattering unless ``isotope=True``) at ``temperature`` on a Γ-centred q-point grid of
   the primitive cell (``mesh_length``, or ``mesh`` points per axis), with ``method``:
   ``rta`` (single-mode relaxation-time approximation) or ``lbte`` (direct solution of the
   linearized Boltzmann equation, which phono3py also uses for its RTA number; it raises κ of
   crystals whose normal scattering matters, e.g. NaCl 8.7 → 10.5, NaF 15.9 → 18.9 W/m/K with
   SevenNet-l3i5). LBTE stores a collision matrix of ``(n_ir · 3 n_prim · 3)²`` float64 numbers
   (``n_ir`` irreducible q-points); above ``lbte_max_gb`` the RTA is used and flagged
   ``rta_fallback``. κ = trace/3 of the tensor (W/m/K): the particle-like κ_P of the benchmark,
   without its Wigner coherence term (small for the simple crystals with high κ, not for complex
   low-κ ones).

   Measured on 40 D1 rocksalt/zincblende compounds (SevenNet-l3i5, the default ``phonons.kappa``
   settings, against the D1 labels): RTA log10-MAE 0.237, within 2× 70 %; LBTE 0.221, 78 %; the
   LBTE solve adds 16 % to the wall time (137 of 883 s on one core).

Flags (:data:`KAPPA_FLAGS`, recorded, never dropped): ``imaginary``, ``relax_unconverged``
(``relax_steps`` reached), ``symmetry_changed`` (space group at symprec 1e-3 differs after the
relaxation), ``nonfinite`` (phono3py returned a non-finite tensor; ``kappa`` is NaN),
``rta_fallback`` (``lbte`` asked, the collision matrix would exceed ``lbte_max_gb``),
``lbte_unphysical`` (the LBTE tensor has a non-positive or non-finite diagonal element, which an
ill-conditioned collision matrix can give: seen once, SevenNet-0 on AlSb in an exploration run,
LBTE −264 W/m/K against an RTA of 138 from the same force constants; the RTA κ of the same run is
then reported).

Errors (:class:`~kappaflow.phonons.descriptors.PhononError`, the message is the reason): a
supercell above ``max_fc3_atoms`` / ``max_fc2_atoms`` (raised before any force call), the
potential or phonopy failing during the relaxation or the force sets, phono3py failing.

The device is the calculator's (CPU or CUDA); phono3py itself runs on the CPU (OpenMP / Rust
threads: ``OMP_NUM_THREADS``, ``RAYON_NUM_THREADS``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kappaflow.phonons.descriptors import (
    PhononError,
    PhononSettings,
    _relax,
    _spacegroup,
    supercell_matrix,
)
from kappaflow.structure.crystal import CrystalArrays

KAPPA_FLAGS: tuple[str, ...] = (
    "imaginary",
    "relax_unconverged",
    "symmetry_changed",
    "nonfinite",
    "rta_fallback",
    "lbte_unphysical",
)

#: Solutions of the phonon Boltzmann equation (``KappaSettings.method``).
METHODS: tuple[str, ...] = ("rta", "lbte")


def method_label(method: object) -> str:
    """``RTA`` / ``LBTE`` for reports (``rta`` when the settings do not say)."""
    return str(method or "rta").upper()


#: Order of :attr:`KappaResult.kappa_tensor` (phono3py's Voigt order).
TENSOR_COMPONENTS: tuple[str, ...] = ("xx", "yy", "zz", "yz", "xz", "xy")

#: Symmetry tolerance (Å) of the refinement, the relaxation constraint and the flag.
SYMPREC = 1e-3


@dataclass(frozen=True)
class KappaSettings:
    """How κ_L is computed (lengths in Å, frequencies in THz, temperature in K).

    Attributes:
        fc2_min_length: minimum width of the fc2 (harmonic) supercell in every direction.
        fc3_min_length: minimum width of the fc3 (anharmonic) supercell in every direction;
            smaller than ``fc2_min_length`` because fc3 is where the force calls go.
        max_fc3_atoms: a larger fc3 supercell is refused (:class:`PhononError`).
        max_fc2_atoms: a larger fc2 supercell is refused (:class:`PhononError`).
        cutoff_pair_distance: phono3py's pair cutoff for the fc3 displacements (fewer
            displacements, fc3 zero beyond it); None = every pair.
        displacement: finite-displacement amplitude.
        mesh_length: q-point density of the RTA mesh (Å, phonopy's length mesh): about
            ``mesh_length · |b_i|`` points along each reciprocal vector b_i of the primitive
            cell (no 2π), Γ-centred. 35 Å gives 11×11×11 for Si and NaCl, 13×13×7 for GaN
            and fewer points for bigger cells (whose many bands cost more per point).
        mesh: q-points per reciprocal axis (``mesh³``); overrides ``mesh_length`` when set.
        temperature: temperature of κ.
        method: ``rta`` or ``lbte`` (see the module docstring).
        lbte_max_gb: largest LBTE collision matrix (GB) before falling back to the RTA.
        isotope: add scattering by the natural isotope mass variance (phono3py ``is_isotope``).
        relax: relax cell and positions first (symmetry kept).
        relax_fmax: force convergence of the relaxation (eV/Å).
        relax_steps: FIRE step limit.
        imaginary_threshold_thz: a harmonic frequency below this on the mesh flags ``imaginary``.
    """

    fc2_min_length: float = 12.0
    fc3_min_length: float = 7.0
    max_fc3_atoms: int = 128
    max_fc2_atoms: int = 512
    cutoff_pair_distance: float | None = 4.0
    displacement: float = 0.03
    mesh_length: float = 35.0
    mesh: int | None = None
    temperature: float = 300.0
    method: str = "rta"
    lbte_max_gb: float = 2.0
    isotope: bool = False
    relax: bool = True
    relax_fmax: float = 0.005
    relax_steps: int = 300
    imaginary_threshold_thz: float = -0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"kappa method must be one of {METHODS}, got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for cache keys and logs)."""
        return asdict(self)


@dataclass
class KappaResult:
    """κ_L of one crystal.

    Attributes:
        kappa: trace/3 of the tensor at ``temperature`` (W/m/K); NaN when ``nonfinite``.
        kappa_tensor: the tensor in :data:`TENSOR_COMPONENTS` order (W/m/K), Cartesian axes of
            the input cell.
        flags: the :data:`KAPPA_FLAGS` that apply.
        n_fc3_displacements: displaced fc3 supercells whose forces were computed.
        n_fc2_displacements: displaced fc2 supercells whose forces were computed.
        n_fc3_atoms: atoms in the fc3 supercell.
        n_fc2_atoms: atoms in the fc2 supercell.
        n_primitive: atoms in the primitive cell phono3py found.
        mesh: q-points along each reciprocal axis of the RTA mesh.
        min_freq_thz: lowest harmonic frequency on the q-mesh (THz; negative = imaginary).
        method: the solution used (``rta`` or ``lbte``; ``rta`` after a fallback).
        seconds: wall time.
    """

    kappa: float
    kappa_tensor: list[float]
    flags: list[str] = field(default_factory=list)
    n_fc3_displacements: int = 0
    n_fc2_displacements: int = 0
    n_fc3_atoms: int = 0
    n_fc2_atoms: int = 0
    n_primitive: int = 0
    mesh: list[int] = field(default_factory=list)
    min_freq_thz: float = float("nan")
    method: str = "rta"
    seconds: float = 0.0


def _n_atoms(matrix: np.ndarray, n_cell: int) -> int:
    return int(round(abs(float(np.linalg.det(matrix))))) * n_cell


def _forces(supercells: list[Any], n_atoms: int, calculator: Any) -> tuple[np.ndarray, int]:
    """Return forces (eV/Å) of every displaced supercell (zeros for the skipped, None, ones)."""
    from ase import Atoms

    forces, computed = [], 0
    for sc in supercells:
        if sc is None:  # pair beyond cutoff_pair_distance: no calculation needed
            forces.append(np.zeros((n_atoms, 3)))
            continue
        atoms = Atoms(numbers=sc.numbers, cell=sc.cell, scaled_positions=sc.scaled_positions)
        atoms.pbc = True
        atoms.calc = calculator
        forces.append(np.asarray(atoms.get_forces(), dtype=np.float64))
        computed += 1
    return np.asarray(forces), computed


@dataclass(frozen=True)
class Supercells:
    """The fc3 / fc2 supercell matrices of a cell and their atom counts (see :func:`supercells`)."""

    fc3_matrix: np.ndarray
    fc2_matrix: np.ndarray
    n_fc3: int
    n_fc2: int

    def too_big(self, settings: KappaSettings) -> str | None:
        """Return why a supercell exceeds ``max_fc3_atoms`` / ``max_fc2_atoms``, else None."""
        for name, n, limit, width in (
            ("fc3", self.n_fc3, settings.max_fc3_atoms, settings.fc3_min_length),
            ("fc2", self.n_fc2, settings.max_fc2_atoms, settings.fc2_min_length),
        ):
            if n > limit:
                return (
                    f"{name} supercell of {n} atoms (at least {width:g} Å wide) exceeds "
                    f"max_{name}_atoms={limit}"
                )
        return None


def supercells(atoms: Any, settings: KappaSettings) -> Supercells:
    """Diagonal fc3 / fc2 supercells of the input cell at least the settings' widths wide."""
    fc3 = supercell_matrix(atoms.cell[:], settings.fc3_min_length)
    fc2 = supercell_matrix(atoms.cell[:], settings.fc2_min_length)
    return Supercells(fc3, fc2, _n_atoms(fc3, len(atoms)), _n_atoms(fc2, len(atoms)))


def displaced_phono3py(atoms: Any, cells: Supercells, settings: KappaSettings) -> Any:
    """Return a ``Phono3py`` of ``atoms`` with the settings' finite displacements generated.

    The one set-up of the calculation and of its cost estimate
    (:func:`kappaflow.phonons.plan.force_plan`).
    """
    from phono3py import Phono3py
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(
        numbers=atoms.numbers, cell=atoms.cell[:], scaled_positions=atoms.get_scaled_positions()
    )
    with warnings.catch_warnings():
        # phonopy >= 4 notes that "auto" is not v3's identity default: it is wanted here.
        warnings.filterwarnings("ignore", message="primitive_matrix defaulted")
        ph3 = Phono3py(
            unit,
            supercell_matrix=cells.fc3_matrix,
            primitive_matrix="auto",
            phonon_supercell_matrix=cells.fc2_matrix,
        )
    ph3.generate_displacements(
        distance=settings.displacement, cutoff_pair_distance=settings.cutoff_pair_distance
    )
    return ph3


def lbte_matrix_gb(ph3: Any) -> float:
    """Size (GB) of phono3py's LBTE collision matrix on the mesh set on ``ph3``.

    ``(n_ir · n_band · 3)²`` float64 numbers, ``n_ir`` the irreducible q-points of the
    Γ-centred mesh of the primitive cell (spglib).
    """
    import spglib

    prim = ph3.primitive
    cell = (prim.cell, prim.scaled_positions, prim.numbers)
    mapping, _ = spglib.get_ir_reciprocal_mesh([int(n) for n in ph3.mesh_numbers], cell)
    n_ir = len(np.unique(mapping))
    return 8.0 * (n_ir * 3 * len(prim) * 3) ** 2 / 1e9


def _solution(conductivity: Any, method: str) -> tuple[np.ndarray, str, list[str]]:
    """Return the κ tensor (W/m/K, Voigt), the solution it is from, and its flags.

    An LBTE tensor whose diagonal is not all finite and positive is replaced by the RTA tensor
    phono3py computed in the same run (``kappa_RTA``), flagged ``lbte_unphysical``.
    """
    # [sigma, temperature, 6]; one sigma (tetrahedron), one temperature.
    tensor = np.asarray(conductivity.kappa, dtype=np.float64)[0, 0]
    if method == "lbte":
        diagonal = tensor[:3]
        if not (np.all(np.isfinite(diagonal)) and np.all(diagonal > 0)):
            rta = np.asarray(conductivity.kappa_RTA, dtype=np.float64)[0, 0]
            return rta, "rta", ["lbte_unphysical"]
    return tensor, method, []


def phono3py_kappa(
    crystal: CrystalArrays, calculator: Any, settings: KappaSettings | None = None
) -> KappaResult:
    """Compute κ_L in the RTA from phono3py force constants (see the module docstring).

    Args:
        crystal: the structure (Å, fractional coordinates).
        calculator: an ASE calculator (:func:`kappaflow.phonons.potential.load_calculator`);
            its device (CPU or CUDA) is the device of every force call.
        settings: :class:`KappaSettings`; defaults when None.

    Returns:
        :class:`KappaResult` with the flags that apply (an ``imaginary`` or ``nonfinite``
        result is returned, not dropped).

    Raises:
        PhononError: a supercell would exceed ``max_fc3_atoms`` / ``max_fc2_atoms`` (before any
            force call), or the potential, phonopy or phono3py failed; the message says which.
    """
    from ase.spacegroup.symmetrize import refine_symmetry

    settings = settings or KappaSettings()
    start = time.perf_counter()
    atoms = crystal.to_ase()
    cells = supercells(atoms, settings)
    n_fc3, n_fc2 = cells.n_fc3, cells.n_fc2
    too_big = cells.too_big(settings)
    if too_big:
        raise PhononError(too_big)

    flags: list[str] = []
    try:
        sg_before = _spacegroup(atoms)
        refine_symmetry(atoms, symprec=SYMPREC)
        if settings.relax:
            relax_settings = PhononSettings(
                relax_fmax=settings.relax_fmax, relax_steps=settings.relax_steps
            )
            atoms, converged = _relax(atoms, calculator, relax_settings)
            if not converged:
                flags.append("relax_unconverged")
        if _spacegroup(atoms) != sg_before:
            flags.append("symmetry_changed")

        ph3 = displaced_phono3py(atoms, cells, settings)
        fc2_forces, n_disp2 = _forces(ph3.phonon_supercells_with_displacements, n_fc2, calculator)
        fc3_forces, n_disp3 = _forces(ph3.supercells_with_displacements, n_fc3, calculator)
        ph3.phonon_forces = fc2_forces
        ph3.forces = fc3_forces
        ph3.produce_fc2()
        ph3.symmetrize_fc2()
        ph3.produce_fc3()
        ph3.symmetrize_fc3()
    except (RuntimeError, ValueError, FloatingPointError) as err:
        raise PhononError(f"potential or phonopy failed: {err}") from err

    try:
        ph3.mesh_numbers = (
            float(settings.mesh_length) if settings.mesh is None else [settings.mesh] * 3
        )
        ph3.init_phph_interaction()
        ph3.run_phonon_solver()
        freqs, _, _ = ph3.get_phonon_data()
        min_freq = float(np.min(freqs))
        if min_freq < settings.imaginary_threshold_thz:
            flags.append("imaginary")
        method = settings.method
        if method == "lbte" and lbte_matrix_gb(ph3) > settings.lbte_max_gb:
            method = "rta"
            flags.append("rta_fallback")
        ph3.run_thermal_conductivity(
            is_LBTE=method == "lbte",
            temperatures=[settings.temperature],
            is_isotope=settings.isotope,
        )
        tensor, method, solution_flags = _solution(ph3.thermal_conductivity, method)
        flags += solution_flags
    except (RuntimeError, ValueError, FloatingPointError, MemoryError) as err:
        raise PhononError(f"phono3py failed: {err}") from err

    kappa = float(tensor[:3].mean())
    if not np.all(np.isfinite(tensor)):
        flags.append("nonfinite")
        kappa = float("nan")
    return KappaResult(
        kappa=kappa,
        kappa_tensor=[float(x) for x in tensor],
        flags=flags,
        n_fc3_displacements=n_disp3,
        n_fc2_displacements=n_disp2,
        n_fc3_atoms=n_fc3,
        n_fc2_atoms=n_fc2,
        n_primitive=len(ph3.primitive),
        mesh=[int(n) for n in ph3.mesh_numbers],
        min_freq_thz=min_freq,
        method=method,
        seconds=time.perf_counter() - start,
    )
