"""Hostile structure files: each gets its own reason, fast and within bounded memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hostile_inputs import hostile_files, poscar, write_corpus
from kappaflow.data.validation import ValidationOptions, check_crystal
from kappaflow.structure.cif import (
    CifError,
    ParseLimits,
    Reason,
    StructureFileError,
    escape_control,
    parse_structure_file,
)

#: Default limits but a short parse budget, so the Fm-3m probe (> 150 s unbounded) stops fast.
OPTS = ValidationOptions(parse_timeout=2.0)


def outcome(path: Path, opts: ValidationOptions = OPTS) -> str:
    """Reason code of a file, as ``kappaflow predict`` reports it, or ``ok``."""
    try:
        rejection = check_crystal(parse_structure_file(path, opts.parse_limits()), opts)
    except (CifError, StructureFileError) as exc:
        return exc.reason.value
    return rejection.reason.value if rejection else "ok"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list:
    return write_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("probe", hostile_files(), ids=lambda p: escape_control(p.name))
def test_each_probe_has_its_reason(probe, corpus) -> None:
    path = dict((p.name, path) for p, path in corpus)[probe.name]
    t0 = time.perf_counter()
    assert outcome(path) == probe.reason
    assert time.perf_counter() - t0 < 10.0


def test_reasons_are_specific(corpus) -> None:
    assert all(Reason(p.reason) for p, _ in corpus)  # every reason is a known code
    assert "check_failed" not in {p.reason for p, _ in corpus}


def test_valid_poscar_still_parses_and_velocity_block_is_ignored(tmp_path: Path) -> None:
    ok = tmp_path / "POSCAR"
    ok.write_text(poscar("1 1", 2))
    assert outcome(ok) == "ok"
    contcar = tmp_path / "CONTCAR"
    contcar.write_text(poscar("1 1", 2) + "\n0 0 0\n0 0 0\n")  # velocities after a blank line
    assert outcome(contcar) == "ok"


def test_no_budget_parses_in_process(tmp_path: Path) -> None:
    from hostile_inputs import nacl_cif
    from kappaflow.structure.cif import parse_cif

    text = nacl_cif()
    assert parse_cif(text, ParseLimits(parse_timeout=None)).n_sites == 8


def test_escape_control() -> None:
    assert escape_control("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"
    assert escape_control("NaCl.cif") == "NaCl.cif"
