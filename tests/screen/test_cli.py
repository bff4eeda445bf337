"""`kappaflow predict` on files (CIF, POSCAR, malformed) and `kappaflow screen --only-dirs`."""

from __future__ import annotations

import json

import pytest
import registry_testkit as kit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory, _migrated_mlflow_db):
    """One project with a registered champion for the module (cwd and store kept meanwhile)."""
    from omegaconf import OmegaConf

    from kappaflow.stages.register import register_stage

    tmp = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as monkeypatch:
        root, cfg = kit.enter_project(tmp / "proj", _migrated_mlflow_db, monkeypatch)
        # 30 out-of-fold rows: enough residuals for a finite 95 % conformal interval
        kit.write_candidate(root, "finetune", "paraisite_d1", 0.3, n_members=3, n_rows=30)
        register_stage(cfg)
        OmegaConf.save(cfg, root / "params.yaml")  # the CLI reads the project's params.yaml
        files = tmp / "files"
        files.mkdir()
        (files / "NaCl.cif").write_text(kit.cif(kit.nacl()))
        kit.silicon().to(filename=str(files / "POSCAR_Si"))
        (files / "broken.cif").write_text("data_broken\n_cell_length_a 5.0\n")
        yield root, cfg, files


def test_predict_prints_kappa_and_sigma_and_reports_bad_files(champion_project, capsys):
    from kappaflow.cli import main

    _, _, files = champion_project
    paths = [str(files / n) for n in ("NaCl.cif", "broken.cif", "POSCAR_Si")]
    code = main(["predict", *paths])
    out, err = capsys.readouterr()
    assert code == 1  # one file failed, the others were still predicted
    assert f"ERROR {paths[1]}: malformed_cif" in err
    lines = out.splitlines()
    assert lines[0].startswith("file") and "κ (W/m/K)" in lines[0] and "95 % interval" in lines[0]
    assert lines[0].split()[1:3] == ["formula", "pymatgen"]
    assert "calibrated on 30 out-of-fold predictions" in out
    assert any(line.startswith(paths[0]) and " NaCl " in line for line in lines)
    assert any(line.startswith(paths[2]) and " Si " in line for line in lines)
    assert "no (unseen elements: Si)" in out


def test_predict_json_with_explicit_model_uri(champion_project, capsys):
    from kappaflow.cli import main

    _, _, files = champion_project
    code = main(["predict", "--json", "--model-uri", "models:/kappaflow-kappa/1",
                 str(files / "NaCl.cif")])  # fmt: skip
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and len(records) == 1
    rec = records[0]
    assert rec["formula"] == "NaCl" and rec["kappa"] > 0 and rec["sigma_log10"] >= 0
    assert rec["formula_conventional"] == "NaCl"  # beside pymatgen's (TePb -> PbTe)
    assert rec["kappa_lo95"] <= rec["kappa_lo68"] <= rec["kappa"] <= rec["kappa_hi68"]
    assert rec["kappa_hi68"] <= rec["kappa_hi95"] and rec["error"] == ""


def test_missing_file_and_missing_model_are_clear(champion_project, capsys):
    from kappaflow.cli import main

    _, _, files = champion_project
    assert main(["predict", str(files / "nope.cif")]) == 1
    assert "ERROR " in capsys.readouterr().err
    assert main(["predict", "--model-uri", "models:/no-such-model@champion", "x.cif"]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_screen_command_on_a_directory_only(champion_project, capsys):
    from kappaflow.cli import main

    root, _, files = champion_project
    assert main(["screen", "--only-dirs", "--dir", str(files)]) == 0
    summary = json.loads((root / "reports/screen/summary.json").read_text())
    assert summary["n_pool"] == 3 and summary["n_scored"] == 2 and summary["n_quarantined"] == 1


def test_predict_scores_the_good_file_among_hostile_ones(champion_project, capsys, tmp_path):
    """Every hostile file gets an `ERROR file: reason` line; the good file is still scored."""
    from hostile_inputs import write_corpus
    from kappaflow.cli import main
    from kappaflow.structure.cif import escape_control

    _, _, files = champion_project
    corpus = [
        (p, path)
        for p, path in write_corpus(tmp_path / "hostile", include_large=False)
        if p.reason != "parse_timeout"  # 10 s budget from params.yaml; covered elsewhere
    ]
    good = str(files / "NaCl.cif")
    paths = [str(corpus[0][1]), good, *(str(path) for _, path in corpus[1:])]
    code = main(["predict", "--model-uri", "models:/kappaflow-kappa/1", *paths])
    out, err = capsys.readouterr()
    assert code == 1
    for probe, path in corpus:
        assert f"ERROR {escape_control(str(path))}: {probe.reason}:" in err, probe.name
    assert any(line.startswith(good) and " NaCl " in line for line in out.splitlines())
    errors = [line for line in err.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == len(corpus)  # a newline in a file name cannot add a line
