"""Tier 2 of the screen (stage ``verify``, ``kappaflow verify``) and the physics-route validation.

The stage tests replace the κ computation (``compute_descriptors``) by a fake whose κ depends on
the structure, so what is checked is the funnel's bookkeeping: every candidate accounted for,
reasons kept, duplicates computed once, cached records reused, the disagreement flag, the
report, metrics and MLflow run. One test computes a real κ (2-atom NaCl, tiny settings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystal_fixtures import diamond_si, rocksalt_nacl, triclinic_cato
from kappaflow.layout import project_root
from kappaflow.phonons.validation import (
    kappa_table_path,
    kappa_validation,
    loo_offset,
    ml_physics_agreement,
    validation_markdown,
)
from kappaflow.structure.crystal import CrystalArrays
from stage_testkit import full_profile_params

REPO_PARAMS = project_root() / "params.yaml"
D1_SOURCE = "data/interim/paraisite_d1/valid.parquet"


def read_verified(path: Path) -> pd.DataFrame:
    """``verified.csv`` with empty ``flags`` / ``reason`` as empty strings."""
    table = pd.read_csv(path, dtype={"id": str, "flags": str, "reason": str})
    return table.fillna({"flags": "", "reason": ""})


def nacl_primitive() -> Structure:
    a = 5.64 / 2
    lattice = Lattice([[0, a, a], [a, 0, a], [a, a, 0]])
    return Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# ------------------------------------------------------------------------------------------
# library: validation against labels, ML vs physics
# ------------------------------------------------------------------------------------------


def test_kappa_validation_numbers_and_missing_rows():
    labels = pd.DataFrame({"id": ["a", "b", "c", "d"], "kappa": [1.0, 10.0, 100.0, 5.0]})
    kappa = pd.DataFrame(
        {
            "id": ["d", "c", "b", "a"],  # order of the κ table does not matter
            "ph3_kappa_w_mk": [np.nan, 100.0, 40.0, 2.0],
            "reason": ["too big", "", "", ""],
            "seconds": [0.0, 30.0, 20.0, 10.0],
        }
    )
    row = kappa_validation({"d1": kappa}, {"d1": labels}).iloc[0]
    assert (row.n, row.n_computed) == (4, 3)
    err = np.log10([2.0, 4.0, 1.0])
    assert row.log10_mae == pytest.approx(np.abs(err).mean())
    assert row.within_2x == pytest.approx(2 / 3)  # 2× counts as within, 4× does not
    assert row.median_ratio == pytest.approx(2.0)
    assert row.spearman == pytest.approx(1.0)
    assert row.seconds_per_compound == pytest.approx(20.0)
    # softening correction: offset = median log10(label / κ) = log10(1/2); leave one out, a
    # (2 vs 1) is corrected by the median of b and c (-0.301: exact), b and c miss by 0.4515
    assert row.offset_log10 == pytest.approx(np.log10(0.5))
    assert row.log10_mae_loo == pytest.approx((0 + 2 * 0.4515) / 3, abs=1e-4)
    assert row.within_2x_loo == pytest.approx(1 / 3)
    text = validation_markdown(kappa_validation({"d1": kappa}, {"d1": labels}))
    assert "| d1 | 3/4 | 0.301 | 67 % | 1.000 | 2.00 | 0.301 | 33 % | 20.0 |" in text
    with pytest.raises(KeyError, match="no phono3py row"):
        kappa_validation({"d1": kappa.iloc[1:]}, {"d1": labels})
    none = kappa_validation({"d1": kappa.assign(ph3_kappa_w_mk=np.nan)}, {"d1": labels})
    assert none.iloc[0].n_computed == 0 and math.isnan(none.iloc[0].log10_mae)
    assert "| d1 | 0/4 | – | – | – | – | – | – | – |" in validation_markdown(none)


def test_loo_offset_is_held_out_and_refuses_bad_input():
    rng = np.random.default_rng(0)
    label = rng.uniform(-1, 3, 30)
    physics = label - 0.17 + rng.normal(0, 0.05, 30)  # a potential that is 1.5x too soft
    offset, loo = loo_offset(physics, label)
    assert offset == pytest.approx(0.17, abs=0.03)
    assert np.abs(loo - label).mean() < 0.06 < np.abs(physics - label).mean()
    # held out: moving one compound's label does not move its own corrected value
    moved = label.copy()
    moved[3] += 5.0
    assert loo_offset(physics, moved)[1][3] == pytest.approx(loo[3])
    assert all(np.isnan(v) for v in (loo_offset(physics[:1], label[:1])[0],))
    with pytest.raises(ValueError, match="finite"):
        loo_offset(physics, np.r_[label[:-1], np.nan])


def test_ml_physics_agreement_both_ways():
    ml = np.array([10.0, 10.0, 9.0, 10.0, 10.0, 1.0, np.nan, 5.0])
    ph = np.array([10.0, 3.5, 3.0, 2.9, 40.0, 3.0, 5.0, 0.0])
    ratio, disagree = ml_physics_agreement(ml, ph, 3.0)
    assert ratio[:6] == pytest.approx([1.0, 10 / 3.5, 3.0, 10 / 2.9, 0.25, 1 / 3])
    # exactly 3x either way agrees; beyond it disagrees; nothing to compare: no disagreement
    assert disagree.tolist() == [False, False, False, True, True, False, False, False]
    assert math.isnan(ratio[6]) and math.isnan(ratio[7])
    with pytest.raises(ValueError, match="> 1"):
        ml_physics_agreement(ml, ph, 1.0)


# ------------------------------------------------------------------------------------------
# the stage on a scratch project
# ------------------------------------------------------------------------------------------


class FakeKappa:
    """Stands in for the per-structure phono3py call of ``compute_descriptors`` (the cache, the
    bookkeeping and the table around it are the real ones): κ from the elements, calls counted.

    Na-containing cells: 5 W/m/K (the 2-atom one flagged ``imaginary``); the rest 100 W/m/K.
    """

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, crystal: CrystalArrays, settings: Any, kind: str) -> dict[str, Any]:
        assert kind == "kappa"
        self.calls.append(len(crystal.numbers))
        sodium = 11 in crystal.numbers
        return {
            "values": {"ph3_kappa_w_mk": 5.0 if sodium else 100.0},
            "flags": ["imaginary"] if sodium and len(crystal.numbers) == 2 else [],
            "reason": None,
            "n_primitive": 2,
            "seconds": 3.0 if sodium else 7.0,
        }


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKappa:
    from kappaflow.phonons import batch

    physics = FakeKappa()
    monkeypatch.setattr(batch, "_init_worker", lambda *a: None)  # no potential loaded
    monkeypatch.setattr(batch, "_compute_one", physics)
    return physics


def _top_row(mid: str, dataset: str, formula: str, kappa: float, source: str) -> dict[str, Any]:
    return {
        "rank": 0,
        "id": mid,
        "dataset": dataset,
        "formula": formula,
        "spacegroup": 225,
        "kappa": kappa,
        "log10_kappa": math.log10(kappa),
        "sigma_log10": 0.1,
        "kappa_lo95": kappa / 2.5,
        "kappa_hi95": kappa * 2.5,
        "in_domain": True,
        "source": source,
    }


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_db: str):
    """A project dir with a toy D1 prepared table, its phonons κ table and two top lists."""
    from kappaflow.config import load_params

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    full_profile_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    structures = {
        "mp-nacl": (rocksalt_nacl(), "NaCl", 7.0),
        "mp-si": (diamond_si(), "Si", 130.0),
        "mp-cato": (triclinic_cato(), "CaTiO3", 3.0),
    }
    rows = []
    for mid, (s, formula, kappa) in structures.items():
        rows.append(
            {"id": mid, "formula": formula, "spacegroup": 1, "kappa": kappa}
            | CrystalArrays.from_structure(s).to_row()
        )
    (tmp_path / "data/interim/paraisite_d1").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / D1_SOURCE)
    table = kappa_table_path(tmp_path, "paraisite_d1")
    table.parent.mkdir(parents=True)
    pd.DataFrame(
        {
            "id": ["mp-nacl", "mp-si", "mp-cato"],
            "formula": ["NaCl", "Si", "CaTiO3"],
            "ph3_kappa_w_mk": [6.0, 100.0, np.nan],
            "flags": ["", "", ""],
            "reason": ["", "", "family other not in phonons.kappa.families (CPU budget)"],
            "n_primitive": [2, 2, 0],
            "seconds": [10.0, 20.0, 0.0],
            "cached": [True, True, False],
        }
    ).to_parquet(table)
    user = tmp_path / "mine"
    user.mkdir()
    nacl_primitive().to(filename=str(user / "nacl.cif"))
    (user / "bad.cif").write_text("data_x\n_this is not a structure\n")
    screen = tmp_path / "reports/screen"
    screen.mkdir(parents=True)
    high = [
        _top_row("mp-si", "paraisite_d1", "Si", 500.0, D1_SOURCE),  # 5x ML/physics: disagrees
        _top_row("mp-cato", "paraisite_d1", "CaTiO3", 50.0, D1_SOURCE),  # 5 atoms > 4
        _top_row("mine/nacl.cif", "user", "NaCl", 4.0, "mine/nacl.cif"),
        _top_row("mp-nacl", "paraisite_d1", "NaCl", 6.0, D1_SOURCE),  # 3rd that fits
        _top_row("mp-kcl", "paraisite_d1", "KCl", 5.0, D1_SOURCE),  # beyond n_high
    ]
    low = [
        _top_row("mp-nacl", "paraisite_d1", "NaCl", 6.0, D1_SOURCE),
        _top_row("mp-missing", "paraisite_d1", "KCl", 3.0, D1_SOURCE),
        _top_row("mine/bad.cif", "user", "", 2.0, "mine/bad.cif"),
        _top_row("mp-si", "paraisite_d1", "Si", 500.0, D1_SOURCE),  # also in the high list
    ]
    pd.DataFrame(high).to_csv(screen / "top_high.csv", index=False)
    pd.DataFrame(low).to_csv(screen / "top_low.csv", index=False)
    cfg = load_params(
        tmp_path / "params.yaml",
        ["verify.n_high=3", "verify.n_low=4", "verify.workers=1", "verify.one_per_formula=false"],
    )
    return tmp_path, cfg


def test_stage_accounts_for_every_candidate(scratch, fake):
    import mlflow

    from kappaflow.stages import verify

    root, cfg = scratch
    metrics = verify.verify_stage(cfg)

    table = read_verified(root / "reports/verify/verified.csv")
    assert list(table.columns) == list(verify.VERIFIED_COLUMNS)
    assert list(zip(table.side, table.id, strict=True)) == [
        ("high", "mp-si"), ("high", "mp-cato"), ("high", "mine/nacl.cif"), ("high", "mp-nacl"),
        ("low", "mp-nacl"), ("low", "mp-missing"), ("low", "mine/bad.cif"), ("low", "mp-si"),
    ]  # fmt: skip
    assert sorted(fake.calls) == [2, 8, 8]  # NaCl (user, primitive), NaCl, Si: Si once
    reasons = dict(zip(table.side + ":" + table.id, table.reason, strict=True))
    assert reasons["high:mp-cato"] == (
        "5 atoms in the primitive cell > verify.max_primitive_atoms=4 (CPU budget)"
    )
    assert reasons["low:mp-missing"] == f"id mp-missing not in {D1_SOURCE}"
    assert reasons["low:mine/bad.cif"] != ""
    assert sum(r == "" for r in reasons.values()) == 5  # the walk went past mp-cato
    kappa = dict(zip(table.side + ":" + table.id, table.kappa_phono3py, strict=True))
    assert kappa["high:mp-si"] == kappa["low:mp-si"] == 100.0
    assert kappa["high:mine/nacl.cif"] == 5.0 and kappa["low:mp-nacl"] == 5.0
    assert table.loc[table.id == "mine/nacl.cif", "flags"].item() == "imaginary"
    assert table.ratio.iloc[0] == pytest.approx(5.0)  # ML 500 / phono3py 100
    # softening correction from the validated D1 set (same potential and settings): the median
    # of log10(label / κ) over NaCl (7 vs 6) and Si (130 vs 100)
    offset = float(np.median(np.log10([7 / 6, 130 / 100])))
    assert table.kappa_phono3py_corrected.to_numpy() == pytest.approx(
        table.kappa_phono3py.to_numpy() * 10**offset, nan_ok=True
    )
    assert table.disagree.tolist() == [True, False, False, False, False, False, False, True]
    assert metrics["n_candidates"] == 8
    assert (metrics["n_computed"], metrics["n_not_computed"]) == (5, 3)
    assert metrics["n_disagree"] == 2 and metrics["n_flagged"] == 1
    assert metrics["validation_D1.n_computed"] == 2
    d1_mae = float(np.mean(np.abs(np.log10([6 / 7, 100 / 130]))))
    assert metrics["validation_D1.log10_mae"] == pytest.approx(d1_mae)
    on_disk = json.loads((root / "metrics/headline/verify.json").read_text())
    assert on_disk == pytest.approx(metrics)

    report = (root / "reports/verify.md").read_text()
    assert "## ML and physics disagree by more than 3×" in report
    assert "* Si (mp-si, top high #1): κ ML 500 vs phono3py 100 W/m/K (ratio 5.00)" in report
    assert "* Si (mp-si, top low #4)" in report
    assert "| paraisite_d1 | 2/3 | " in report and "s/compound" in report
    assert "## Wall time" in report and "Same potential and settings" in report
    assert f"phono3py κ × 10^{offset:+.3f}" in report
    assert "1× id mp-missing not in" in report  # the reasons, counted
    assert (root / "reports/verify/parity.png").stat().st_size > 1000

    run = mlflow.search_runs(experiment_names=["kappaflow-registry"], output_format="list")[0]
    assert run.info.run_name == "verify"
    assert run.data.params["n_candidates"] == "8"
    assert run.data.metrics["validation_D1.log10_mae"] == pytest.approx(d1_mae)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "verify")}
    assert {"verify/verify.md", "verify/verify.json", "verify/verified.csv"} <= files
    assert "verify/parity.png" in files

    fake.calls.clear()  # a second run: everything from the cache
    verify.verify_stage(cfg)
    again = read_verified(root / "reports/verify/verified.csv")
    assert fake.calls == []
    assert again.loc[again.reason == "", "cached"].all()
    assert again.kappa_phono3py.tolist() == pytest.approx(
        table.kappa_phono3py.tolist(), nan_ok=True
    )


def test_records_of_the_phonons_cache_are_reused(scratch, fake):
    from kappaflow.phonons.batch import cache_key
    from kappaflow.stages import verify

    root, cfg = scratch
    vc = verify.VerifyConfig.from_cfg(cfg, root)
    si = CrystalArrays.from_structure(diamond_si())
    record = {"values": {"ph3_kappa_w_mk": 123.0}, "flags": [], "reason": None,
              "n_primitive": 2, "seconds": 40.0}  # fmt: skip
    phonons_cache = root / "data/phonons/cache"
    phonons_cache.mkdir(parents=True)
    (phonons_cache / f"{cache_key(si, vc.kappa, vc.potential, 'kappa')}.json").write_text(
        json.dumps(record)
    )
    verify.verify_stage(cfg)
    table = read_verified(root / "reports/verify/verified.csv")
    si_rows = table[table.id == "mp-si"]
    assert si_rows.kappa_phono3py.tolist() == [123.0, 123.0]
    assert si_rows.cached.all() and si_rows.seconds.tolist() == [40.0, 40.0]
    assert sorted(fake.calls) == [2, 8]  # only the two NaCl cells were computed


def test_screen_without_champion_writes_outputs_saying_so(scratch, fake):
    from kappaflow.stages import verify

    root, cfg = scratch
    header = ",".join(verify.SCREEN_COLUMNS) + "\n"
    for name in verify.TOP_FILES.values():
        (root / "reports/screen" / name).write_text(header)
    cfg.phonons.kappa.datasets = []
    metrics = verify.verify_stage(cfg)
    assert fake.calls == []
    assert metrics["n_candidates"] == 0 and metrics["n_computed"] == 0
    table = pd.read_csv(root / "reports/verify/verified.csv")
    assert list(table.columns) == list(verify.VERIFIED_COLUMNS) and table.empty
    report = (root / "reports/verify.md").read_text()
    assert "No candidates: the screen's top lists" in report
    assert "phonons.kappa.datasets is empty" in report
    assert (root / "reports/verify/parity.png").is_file()


def test_missing_top_list_is_an_error(scratch):
    from kappaflow.stages import verify

    root, cfg = scratch
    (root / "reports/screen/top_low.csv").unlink()
    with pytest.raises(FileNotFoundError, match="run the screen first"):
        verify.verify_stage(cfg)


def test_accounting_check_catches_a_row_without_kappa_or_reason():
    from kappaflow.stages.verify import VERIFIED_COLUMNS, check_accounting

    table = pd.DataFrame(
        {
            "side": ["high", "high", "low"],
            "rank": [1, 2, 1],
            "id": ["a", "b", "c"],
            "kappa_phono3py": [10.0, np.nan, np.nan],
            "flags": ["", "", "nonfinite"],
            "reason": ["", "too big", ""],
        }
    )
    assert set(table.columns) <= set(VERIFIED_COLUMNS)
    assert check_accounting(table, 3) == {"n_candidates": 3, "n_computed": 2, "n_not_computed": 1}
    with pytest.raises(RuntimeError, match="3 candidates in, 3 rows out"):
        check_accounting(table.assign(flags=""), 3)  # c: no κ, no reason, no flag
    with pytest.raises(RuntimeError, match="4 candidates in"):
        check_accounting(table, 4)  # a candidate lost


def test_user_dataset_name_matches_the_pool():
    from kappaflow.screen.pool import USER_DATASET
    from kappaflow.stages.verify import USER_DATASET as VERIFY_USER

    assert VERIFY_USER == USER_DATASET


# ------------------------------------------------------------------------------------------
# kappaflow verify FILE...
# ------------------------------------------------------------------------------------------


def test_cli_reports_bad_files_and_prints_the_others(scratch, fake, capsys):
    from kappaflow.cli import main

    root, _ = scratch
    code = main(["verify", "--workers", "1", "mine/nacl.cif", "mine/bad.cif", "mine/none.cif"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "ERROR mine/bad.cif:" in err and "ERROR mine/none.cif: missing_file" in err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["file", "formula"] and "corrected" in lines[0]
    corrected = 5.0 * 10 ** float(np.median(np.log10([7 / 6, 130 / 100])))  # the D1 offset
    assert lines[1].split()[:5] == ["mine/nacl.cif", "NaCl", "5", f"{corrected:.3g}", "imaginary"]
    assert len(fake.calls) == 1 and (root / "data/verify/cache").is_dir()

    code = main(["verify", "--json", "--no-cache", "--workers", "1", "mine/nacl.cif"])
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and len(fake.calls) == 2  # --no-cache: computed again
    assert records[0]["kappa_phono3py"] == 5.0 and records[0]["cached"] is False
    assert records[0]["kappa_phono3py_corrected"] == pytest.approx(corrected)
    assert records[0]["formula"] == "NaCl" and records[0]["reason"] == ""


def test_real_kappa_of_rocksalt_nacl(tmp_path, monkeypatch):
    """One real phono3py run through ``kappaflow verify``'s code path: 2-atom NaCl, tiny mesh."""
    from kappaflow.config import load_params
    from kappaflow.stages.verify import verify_files

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    tiny = [
        "verify.settings.fc2_min_length=7.0",
        "verify.settings.fc3_min_length=7.0",
        "verify.settings.mesh=6",
        "verify.settings.relax_fmax=0.01",
        "verify.workers=1",
        "verify.device=cpu",
    ]
    cfg = load_params(REPO_PARAMS, tiny)
    nacl_primitive().to(filename=str(tmp_path / "NaCl.cif"))
    table = verify_files(cfg, ["NaCl.cif"], progress=False)
    row = table.iloc[0].to_dict()
    assert (row["reason"], row["flags"], row["formula"]) == ("", "", "NaCl")
    assert 1.0 < row["kappa_phono3py"] < 30.0  # PBE phono3py ≈ 6-8 W/m/K
    assert row["seconds"] > 0 and not row["cached"]
    again = verify_files(cfg, ["NaCl.cif"], progress=False).iloc[0].to_dict()
    assert again["cached"] and again["kappa_phono3py"] == row["kappa_phono3py"]


def test_one_set_of_kappa_settings_and_a_small_smoke_run():
    from kappaflow.config import compose

    cfg = compose()
    assert cfg.verify.settings == cfg.phonons.kappa.settings  # interpolated, not a copy
    assert cfg.verify.potential == cfg.phonons.potential
    smoke = compose(["+experiment=smoke"])
    assert smoke.verify.n_high + smoke.verify.n_low <= 2
    assert smoke.verify.max_primitive_atoms <= 2
    assert smoke.verify.settings.mesh <= 4 and smoke.verify.settings.max_fc3_atoms <= 64


def test_the_walk_passes_over_polymorphs_and_costly_cells(scratch, monkeypatch):
    from kappaflow.phonons import plan as plan_module
    from kappaflow.stages import verify

    root, cfg = scratch
    rows = [
        _top_row("mp-si", "paraisite_d1", "Si", 500.0, D1_SOURCE),
        _top_row("mp-si", "paraisite_d1", "Si", 400.0, D1_SOURCE),  # same formula again
        _top_row("mp-nacl", "paraisite_d1", "NaCl", 6.0, D1_SOURCE),
        _top_row("mp-kcl", "paraisite_d1", "KCl", 5.0, D1_SOURCE),
    ]
    top = pd.DataFrame(rows).assign(side="high", kappa_ml=1.0)

    def fake_plan(crystal, settings):  # Si too costly, NaCl cheap (force-atoms)
        return plan_module.ForcePlan(9000 if set(crystal.numbers) == {14} else 100, 1, 0, 1)

    monkeypatch.setattr(plan_module, "force_plan", fake_plan)
    vc = verify.VerifyConfig.from_cfg(cfg, root)
    vc = dataclasses.replace(vc, max_force_atoms=6000, one_per_formula=True)
    picked, crystals, reasons = verify.pick_candidates(cfg, top, 1, vc, root)
    assert picked["id"].tolist() == ["mp-si", "mp-si", "mp-nacl"]  # mp-kcl: beyond n = 1
    assert reasons[0] == (
        "9000 atoms in 9000 + 0 displaced supercells > verify.max_force_atoms=6000 (CPU budget)"
    )
    assert reasons[1].startswith("9000 atoms")  # costly, not a polymorph: Si was not picked
    assert reasons[2] == "" and crystals[2] is not None
    vc = dataclasses.replace(vc, max_force_atoms=None)
    picked, _, reasons = verify.pick_candidates(cfg, top, 2, vc, root)
    assert picked["id"].tolist() == ["mp-si", "mp-si", "mp-nacl"]
    assert (
        reasons[1] == "polymorph of Si ranked higher (mp-si) is verified (verify.one_per_formula)"
    )
