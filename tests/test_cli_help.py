"""`kappaflow --help` and every subcommand's help: written for users, no developer notes."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

from kappaflow.cli import build_parser

#: reST roles / literals and implementation notes that belong in docstrings, not in --help.
FORBIDDEN = (
    re.compile(r":(data|func|mod|class|meth|attr|obj):"),
    re.compile(r"``"),
    re.compile(r"stays fast|SUBCOMMAND_MODULES|add_parser|import only light|module level"),
)


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)parser below ``parser`` with its command path, ``parser`` first."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


ALL = _parsers(build_parser())


def test_every_subcommand_is_covered():
    names = {" ".join(p) for p, _ in ALL}
    expected = {
        *("", "config", "config dump", "data", "data report"),
        *("predict", "screen", "verify", "sweep"),
    }
    assert expected <= names
    assert "server" in names and "server grant" in names and "server add-user" in names


@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "kappaflow" for p, _ in ALL])
def test_help_is_for_users(path, parser):
    text = parser.format_help()
    for pattern in FORBIDDEN:
        assert not pattern.search(text), f"kappaflow {' '.join(path)} --help: {pattern.pattern}"
    assert parser.description and len(parser.description.strip()) > 10, path


def test_subcommands_have_one_line_help():
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        for choice in action._choices_actions:
            assert choice.help and "\n" not in choice.help, choice.dest


def test_data_report_has_a_header_row():
    from kappaflow.cli import format_data_report

    rows = [
        {"dataset": "paraisite_d1", "n_input": 95, "n_valid": 95, "n_quarantined": 0,
         "reasons": {}},
        {"dataset": "mp_eform_bandgap", "n_input": 1500, "n_valid": 1498, "n_quarantined": 2,
         "reasons": {"isolated_atom": 2}, "n_raw": 75399},
        {"dataset": "scan_pool", "status": "not prepared (run `dvc repro prepare`)"},
    ]  # fmt: skip
    lines = format_data_report(rows).splitlines()
    assert lines[0].split() == ["dataset", "input", "valid", "quarantined", "quarantine", "reasons"]
    assert lines[2].split()[:4] == ["mp_eform_bandgap", "1,500", "1,498", "2"]
    assert "isolated_atom=2 (sampled from 75,399)" in lines[2]
    assert lines[3].startswith("scan_pool") and "not prepared" in lines[3]


def test_spinner_is_silent_off_a_terminal(capsys):
    from kappaflow.cli.progress import Spinner

    with Spinner("loading model"):
        pass
    assert capsys.readouterr().err == ""


def test_spinner_draws_and_ends_on_a_terminal():
    import io

    from kappaflow.cli.progress import Spinner

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Spinner("loading model", stream=out, interval_s=0.01):
        import time

        time.sleep(0.05)
    text = out.getvalue()
    assert text.startswith("| loading model") and text.endswith("loading model: done in 0 s\n")


def test_conventional_formula():
    from kappaflow.data.validation import conventional_formula

    got = [conventional_formula(f) for f in ("TePb", "NaCl", "SiO2", "H3N", "Na(ClO4)2", "", "?")]
    assert got == ["PbTe", "NaCl", "SiO2", "NH3", "Na(ClO4)2", "", "?"]


def test_ungated_models_are_flagged():
    from kappaflow.cli.predict import ungated_warning

    assert ungated_warning({"name": "m", "version": 3, "gated": "true"}) is None
    smoke = ungated_warning({"name": "m", "version": 3, "gated": "false: gate not enforced"})
    assert smoke and smoke.startswith("WARNING: m v3") and "mean nothing" in smoke
    assert "no gated tag" in (ungated_warning({"name": "m", "version": 1}) or "")


def test_repro_progress_line(monkeypatch):
    import subprocess

    from kappaflow.cli import repro

    dry = (
        "Stage 'ingest@a' is cached - skipping run, checking out outputs\n"
        "Running stage 'ingest@a':\n> python pipelines/ingest.py a\n"
        "Running stage 'prepare@a':\n> python pipelines/prepare.py a\n"
        "Running stage 'featurize@a':\n"
    )
    status = '{"ingest@a": [], "prepare@a": [], "train@a": [{"changed outs": {}}]}'

    def fake_run(cmd, *a, **k):  # dvc repro --dry / dvc status --json
        return subprocess.CompletedProcess(cmd, 0, status if "status" in cmd else dry, "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    stages = repro.planned_stages(["prepare"])
    # the cached stage is restored, not run; status adds what the dry run cannot see yet
    assert stages[:2] == ["prepare@a", "featurize@a"] and stages[2:] == ["train@a"]
    assert repro.format_seconds(3725) == "1h02m" and repro.format_seconds(245) == "4m05s"
    assert repro.estimate_left(["featurize@a"], {}, []) == "~? left"
    assert repro.estimate_left(["featurize@a"], {"featurize@a": 90.0}, []) == "~1m30s left"
    assert repro.estimate_left(["x", "y"], {"x": 10.0}, [20.0]) == "~30s left"
    assert repro.load_stage_seconds(Path("/no/such/file.json")) == {}


def test_reference_stage_times_cover_the_default_pipeline():
    """A first `kappaflow repro` of a clone estimates every default stage from the shipped
    reference run (seconds > 0), not from the mean of the few stages done so far."""
    import subprocess

    from kappaflow.cli import repro
    from kappaflow.layout import project_root

    ref = repro.load_stage_seconds(repro.REFERENCE_FILE)
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        capture_output=True,
        text=True,
        check=True,
        cwd=project_root(),
    ).stdout.split()
    assert listed and set(listed) <= set(ref), sorted(set(listed) - set(ref))
    assert all(v > 0 for v in ref.values())
    assert sum(ref.values()) > 10 * 60  # ~20 min of stages: not a placeholder
    line = repro.progress_line(1, 2, "prepare@a", 65.0, "~1m30s left")
    assert line == "[kappaflow repro] stage 1 of 2: prepare@a | elapsed 1m05s | ~1m30s left"
    table = repro.stage_time_table([("prepare@a", 30.0), ("featurize@a", 60.0)], 100.0).splitlines()
    assert table[2] == "| 1 | prepare@a | 30s | 30 % |"
    assert table[3] == "| 2 | featurize@a | 1m00s | 60 % |"
    assert table[-1] == "| | **total** (2 stages) | **1m40s** | |"
