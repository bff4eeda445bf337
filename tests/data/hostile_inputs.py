"""Hostile structure *files*, generated in a folder (nothing large is committed).

Each :class:`HostileFile` is one file (or non-file: a folder, a FIFO, a symlink loop) and the
reason code ``kappaflow predict`` / ``screen`` must report for it. Shared by the tests and by
``benchmarks/hostile_inputs.py``. Only pymatgen-free text manipulation: importing this module
is cheap, and so is writing the corpus (the 47 MB CIF takes about a second).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A P1 rock-salt NaCl CIF (8 atoms), the template that the hostile CIFs edit.
NACL_CELL = 5.64
_NACL_SITES = [
    ("Na", (0.0, 0.0, 0.0)),
    ("Na", (0.0, 0.5, 0.5)),
    ("Na", (0.5, 0.0, 0.5)),
    ("Na", (0.5, 0.5, 0.0)),
    ("Cl", (0.5, 0.0, 0.0)),
    ("Cl", (0.5, 0.5, 0.5)),
    ("Cl", (0.0, 0.0, 0.5)),
    ("Cl", (0.0, 0.5, 0.0)),
]


def p1_cif(
    sites: list[tuple[str, tuple[float, float, float]]],
    cell: tuple[float, float, float, float, float, float] = (NACL_CELL,) * 3 + (90.0,) * 3,
    name: str = "hostile",
    coord_fmt: str = "{:.6f}",
) -> str:
    """A P1 CIF with the given ``(symbol, (x, y, z))`` sites and ``(a, b, c, α, β, γ)`` cell."""
    a, b, c, al, be, ga = cell
    head = (
        f"data_{name}\n_symmetry_space_group_name_H-M   'P 1'\n"
        f"_cell_length_a   {a}\n_cell_length_b   {b}\n_cell_length_c   {c}\n"
        f"_cell_angle_alpha   {al}\n_cell_angle_beta   {be}\n_cell_angle_gamma   {ga}\n"
        "_symmetry_Int_Tables_number   1\nloop_\n _symmetry_equiv_pos_site_id\n"
        " _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\nloop_\n _atom_site_type_symbol\n"
        " _atom_site_label\n _atom_site_symmetry_multiplicity\n _atom_site_fract_x\n"
        " _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
    )
    fmt = coord_fmt
    rows = "".join(
        f"  {el}  {el}{i}  1  {fmt.format(x)}  {fmt.format(y)}  {fmt.format(z)}  1\n"
        for i, (el, (x, y, z)) in enumerate(sites)
    )
    return head + rows


def nacl_cif(**cell: float) -> str:
    """Rock-salt NaCl (P1, 8 atoms) with cell parameters overridden by keyword (a, alpha...)."""
    names = ("a", "b", "c", "alpha", "beta", "gamma")
    base = dict(zip(names, (NACL_CELL,) * 3 + (90.0,) * 3, strict=True))
    base.update(cell)
    return p1_cif(_NACL_SITES, tuple(base[k] for k in names))  # type: ignore[arg-type]


def huge_cif(n_atoms: int = 830_584) -> str:
    """A P1 CIF of ``n_atoms`` Na/Cl atoms on a rock-salt grid (830,584 atoms: ~47 MB)."""
    k = int(np.ceil((n_atoms / 8) ** (1 / 3)))
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    base = np.array([xyz for _, xyz in _NACL_SITES])
    frac = ((grid[:, None, :] + base[None]) / k).reshape(-1, 3)[:n_atoms]
    symbols = np.array([el for el, _ in _NACL_SITES] * len(grid))[:n_atoms]
    lines = [
        f"  {el}  {el}{i}  1  {x:.8f}  {y:.8f}  {z:.8f}  1\n"
        for i, (el, (x, y, z)) in enumerate(zip(symbols, frac, strict=True))
    ]
    return p1_cif([], (NACL_CELL * k,) * 3 + (90.0,) * 3) + "".join(lines)


def fm3m_general_positions(n_rows: int = 300, seed: int = 0) -> str:
    """A ~10 KB Fm-3m CIF with ``n_rows`` general positions (192 x n_rows atoms to expand)."""
    rng = np.random.default_rng(seed)
    head = (
        "data_slow\n_symmetry_space_group_name_H-M 'F m -3 m'\n_symmetry_Int_Tables_number 225\n"
        "_cell_length_a 30\n_cell_length_b 30\n_cell_length_c 30\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_atom_site_label\n"
        "_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "_atom_site_occupancy\n"
    )
    xyz = rng.random((n_rows, 3)) * 0.2 + 0.02
    return head + "".join(
        f"Na{i} Na {x:.5f} {y:.5f} {z:.5f} 1\n" for i, (x, y, z) in enumerate(xyz)
    )


def slab_cif(vacuum: float = 30.0) -> str:
    """A 2-layer NaCl (001) slab with ``vacuum`` Å between periodic images (2D)."""
    c = NACL_CELL / 2 + vacuum
    z = (NACL_CELL / 2) / c
    sites = [
        ("Na", (0.0, 0.0, 0.0)),
        ("Cl", (0.5, 0.5, 0.0)),
        ("Cl", (0.0, 0.0, z)),
        ("Na", (0.5, 0.5, z)),
    ]
    a = NACL_CELL / np.sqrt(2)
    return p1_cif(sites, (a, a, c, 90.0, 90.0, 90.0))


def wire_cif(vacuum: float = 20.0) -> str:
    """A NaCl chain along c with ``vacuum`` Å to its images along a and b (1D)."""
    c = NACL_CELL
    sites = [("Na", (0.0, 0.0, 0.0)), ("Cl", (0.0, 0.0, 0.5))]
    return p1_cif(sites, (vacuum, vacuum, c, 90.0, 90.0, 90.0))


def poscar(counts: str, n_coord_lines: int, symbols: str = "Na Cl") -> str:
    """A NaCl-like POSCAR with the given counts line and number of coordinate lines."""
    coords = ["0.0 0.0 0.0", "0.5 0.5 0.5", "0.0 0.5 0.5", "0.5 0.0 0.0"]
    body = "\n".join((coords * 4)[:n_coord_lines])
    return (
        f"hostile\n1.0\n{NACL_CELL} 0 0\n0 {NACL_CELL} 0\n0 0 {NACL_CELL}\n"
        f"{symbols}\n{counts}\nDirect\n{body}\n"
    )


@dataclass(frozen=True)
class HostileFile:
    """One probe: file name, expected reason code, and a writer ``make(path)``."""

    name: str
    reason: str
    make: Callable[[Path], None]
    large: bool = False  # slow or big to generate (the 47 MB CIF)


def _text(content: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(content)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _loop(p: Path) -> None:
    os.symlink(p.name, p)  # a link to itself: ELOOP


def _folder(p: Path) -> None:
    p.mkdir()


def _unreadable(p: Path) -> None:
    p.write_text(nacl_cif())
    p.chmod(0)


def _sites(frac_x: float) -> list[tuple[str, tuple[float, float, float]]]:
    return [("Na", (frac_x, 0.0, 0.0)), *_NACL_SITES[1:]]


def hostile_files() -> list[HostileFile]:
    """Every probe (see the module docstring); names are unique."""
    out = [
        HostileFile("cell_1e30.cif", "cell_too_large", _text(nacl_cif(a=1e30))),
        HostileFile("cell_1e8.cif", "cell_too_large", _text(nacl_cif(a=1e8, b=1e8, c=1e8))),
        HostileFile(
            "huge_830k_atoms.cif", "file_too_large", lambda p: p.write_text(huge_cif()), large=True
        ),  # fmt: skip
        HostileFile("many_atoms_2000.cif", "too_many_sites", _text(huge_cif(2000))),
        HostileFile("fm3m_300_general.cif", "parse_timeout", _text(fm3m_general_positions())),
        HostileFile(
            "frac_1e30.cif", "coordinates_out_of_range", _text(p1_cif(_sites(1e30), coord_fmt="{}"))
        ),
        HostileFile("POSCAR_counts_mismatch", "poscar_count_mismatch", _text(poscar("1 1", 4))),
        HostileFile("POSCAR_too_short", "poscar_too_short", _text("NaCl\n1.0\n5 0 0\n")),
        HostileFile("POSCAR_missing_coords", "poscar_too_short", _text(poscar("4 4", 3))),
        HostileFile(
            "two_blocks.cif",
            "multiple_blocks",
            _text(nacl_cif() + "\n" + nacl_cif().replace("data_hostile", "data_b2")),
        ),  # fmt: skip
        HostileFile(
            "coplanar_119.99.cif",
            "degenerate_cell",
            _text(nacl_cif(alpha=119.99, beta=119.99, gamma=119.99)),
        ),
        HostileFile("a_directory.cif", "is_directory", _folder),
        HostileFile("a_fifo.cif", "not_regular_file", _fifo),
        HostileFile("symlink_loop.cif", "symlink_loop", _loop),
        HostileFile("slab_30A_vacuum.cif", "low_dimensional", _text(slab_cif())),
        HostileFile("wire_20A_vacuum.cif", "low_dimensional", _text(wire_cif())),
        HostileFile("missing.cif", "missing_file", lambda p: None),
        HostileFile("new\nline.cif", "cell_too_large", _text(nacl_cif(a=1e30))),
    ]
    if os.geteuid() != 0:  # root reads anything
        out.append(HostileFile("unreadable.cif", "unreadable_file", _unreadable))
    return out


def write_corpus(folder: Path, include_large: bool = True) -> list[tuple[HostileFile, Path]]:
    """Write every probe into ``folder``; returns ``(probe, path)`` pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for probe in hostile_files():
        if probe.large and not include_large:
            continue
        path = folder / probe.name
        probe.make(path)
        out.append((probe, path))
    return out
