"""screen stage end to end on a tiny project: register a champion, then score the pool."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import registry_testkit as kit

pytestmark = pytest.mark.integration

DS = "paraisite_d1"


def test_screen_accounts_for_every_structure(tiny_project, tmp_path):
    from kappaflow.stages.register import register_stage
    from kappaflow.stages.screen import screen_stage

    root, cfg = tiny_project
    kit.write_candidate(root, "finetune", DS, 0.3, n_members=3)
    register_stage(cfg)
    rows = kit.training_structures()
    extra = [("s-nacl", rows[0][1], 1.0), ("s-si", kit.silicon(), 1.0)]
    kit.write_prepared(root, "scan_pool", kit.prepared_table(extra))
    cfg.screen.datasets = [DS, "scan_pool"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "xe.cif").write_text(kit.cif(kit.rocksalt("Na", "Xe", 6.0)))
    (user / "bad.cif").write_text("this is not a CIF")
    (user / "nacl.cif").write_text(kit.cif(kit.nacl()))  # a training material, from a file

    summary = screen_stage(cfg, str(user))

    out = root / "reports/screen"
    ranked = pd.read_csv(out / "ranked.csv", keep_default_na=False, na_values=[""])
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert summary["n_pool"] == 6 + 1 + 3 and summary["n_duplicates"] == 1
    assert len(ranked) + len(quarantine) == summary["n_pool"] == summary["n_scored"] + 1
    assert quarantine["id"].tolist() == ["user/bad.cif"]
    assert quarantine["reason"].iloc[0] == "malformed_cif"
    assert (np.diff(ranked["kappa"]) <= 0).all() and ranked["rank"].tolist()[0] == 1
    assert (ranked["sigma_log10"] >= 0).all()
    by_id = ranked.set_index("id")
    assert bool(by_id.loc["t-nacl", "in_training_set"]) and bool(by_id.loc["t-nacl", "in_domain"])
    assert not by_id.loc["s-si", "in_domain"] and "Si" in by_id.loc["s-si", "ood_reason"]
    assert not by_id.loc["user/xe.cif", "in_domain"]
    assert by_id.loc["user/xe.cif", "spacegroup"] == 225  # user files: space group computed
    assert bool(by_id.loc["user/nacl.cif", "in_training_set"])
    assert summary["n_ood"] == int((~ranked["in_domain"]).sum()) >= 2
    top_high = pd.read_csv(out / "top_high.csv")
    top_low = pd.read_csv(out / "top_low.csv")
    assert len(top_high) == len(top_low) == cfg.screen.top_n
    assert top_high["in_domain"].all() and top_high["kappa"].is_monotonic_decreasing
    assert top_low["kappa"].is_monotonic_increasing
    assert (out / "kappa_vs_sigma.png").stat().st_size > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["throughput_per_s"] > 0 and saved["model"]["version"] == 1
    assert saved["model_uri"] == "models:/kappaflow-kappa@champion"
    # readable CSVs: the conventional formula beside pymatgen's, rounded floats, relative paths
    assert by_id.loc["t-nacl", "formula_conventional"] == "NaCl"
    assert list(ranked.columns).index("formula_conventional") == 4
    text = (out / "ranked.csv").read_text()
    for cell in (v for line in text.splitlines()[1:] for v in line.split(",")):
        head, dot, digits = cell.partition(".")
        if dot and head.lstrip("-").isdigit() and digits.isdigit():
            assert len(digits) <= 6, cell  # no full-precision floats
    assert all(len(f"{k:.6g}".replace(".", "").lstrip("0")) <= 3 for k in ranked["kappa"])
    assert (ranked["sigma_log10"].round(3) == ranked["sigma_log10"]).all()
    sources = ranked.set_index("id")["source"]
    assert not any(str(v).startswith(str(root)) for v in sources)
    assert sources["t-nacl"].startswith("data/interim/")


def test_champion_json_must_match_the_alias(tiny_project):
    from kappaflow.stages.register import register_stage
    from kappaflow.stages.screen import screen_stage

    root, cfg = tiny_project
    kit.write_candidate(root, "finetune", DS, 0.3)
    register_stage(cfg)
    record = root / "models/champion.json"
    stale = json.loads(record.read_text()) | {"version": 7}
    record.write_text(json.dumps(stale))
    with pytest.raises(RuntimeError, match="dvc repro register"):
        screen_stage(cfg)


def test_no_champion_writes_every_output_with_the_reason(tiny_project):
    """The gate refused the only candidate (the default profile's outcome when no transferred
    model beats the Magpie forest): screen scores nothing, writes every DVC output, says why."""
    from kappaflow.stages.register import register_stage
    from kappaflow.stages.screen import screen_stage

    root, cfg = tiny_project
    cfg.registry.gate.enforce = True
    kit.write_candidate(root, "finetune", DS, 0.30)
    kit.write_baseline(root, "median", DS, 0.60)
    kit.write_baseline(root, "magpie_rf", DS, 0.20)  # the forest is better: gate fails
    assert not register_stage(cfg)["promoted"]

    summary = screen_stage(cfg)

    out = root / "reports/screen"
    assert summary["n_scored"] == 0 and "champion" in summary["no_champion"]
    for name in ("ranked.csv", "top_high.csv", "top_low.csv", "quarantine.csv"):
        assert pd.read_csv(out / name).empty, name
    for name in ("kappa_vs_sigma.png", "surrogate_agreement.png"):  # dvc.yaml plot outputs
        assert (out / name).stat().st_size > 1000, name
    assert json.loads((out / "summary.json").read_text())["no_champion"] == summary["no_champion"]


def _pool_rows(n: int) -> list:
    """``n`` (<= 64) distinct rocksalt / zincblende binaries (+ one with Xe)."""
    cations = ["Na", "K", "Mg", "Ga", "Al", "Li", "Ca", "Sr"]
    anions = ["Cl", "Br", "O", "As"]
    rows = []
    for k in range(n):
        a_el, b_el = cations[(k // 2) % 8], anions[k // 16]
        build = kit.rocksalt if k % 2 else kit.zincblende
        rows.append((f"p-{k}", build(a_el, b_el, 4.5 + 0.05 * k), 1.0))
    rows.append(("p-xe", kit.rocksalt("Na", "Xe", 6.0), 1.0))
    return rows


def test_funnel_scores_the_shortlists_with_the_champion_and_the_rest_with_the_student(
    tiny_project,
):
    from kappaflow.stages.register import register_stage
    from kappaflow.stages.screen import screen_stage

    root, cfg = tiny_project
    kit.write_candidate(root, "finetune", DS, 0.3, n_members=3)
    register_stage(cfg)
    kit.write_prepared(root, "scan_pool", kit.prepared_table(_pool_rows(60)))
    cfg.screen.datasets = ["scan_pool"]
    cfg.screen.top_n = 3
    out = root / "reports/screen"

    cfg.screen.funnel.enabled = False
    full = screen_stage(cfg)
    exhaustive = pd.read_csv(out / "ranked.csv").set_index("id")
    assert full["funnel"] is None and full["n_champion"] == 61 and full["n_surrogate"] == 0
    assert (exhaustive["scored_by"] == "champion").all()

    cfg.screen.funnel.update(
        {"enabled": True, "teacher_size": 20, "shortlist": 5, "n_estimators": 20, "n_jobs": 1}
    )
    summary = screen_stage(cfg)
    ranked = pd.read_csv(out / "ranked.csv", keep_default_na=False, na_values=[""])
    quarantine = pd.read_csv(out / "quarantine.csv")
    funnel = summary["funnel"]
    assert summary["n_pool"] == 61 == len(ranked) + len(quarantine)
    assert funnel["teacher_size"] == 20 and funnel["n_shortlisted"] == 10
    assert summary["n_champion"] == 30 and summary["n_surrogate"] == 31
    by = ranked.set_index("id")
    champ = by[by["scored_by"] == "champion"]
    student = by[by["scored_by"] == "surrogate"]
    # the champion's rows are exactly what the exhaustive screen gives those crystals
    np.testing.assert_allclose(champ["kappa"], exhaustive.loc[champ.index, "kappa"])
    np.testing.assert_allclose(champ["sigma_log10"], exhaustive.loc[champ.index, "sigma_log10"])
    # the student's rows: a κ, no σ / interval / embedding distance; elements still checked
    assert student["kappa"].gt(0).all() and student["sigma_log10"].isna().all()
    assert student["nn_distance"].isna().all()
    if "p-xe" in student.index:
        assert not student.loc["p-xe", "in_domain"] and "Xe" in student.loc["p-xe", "ood_reason"]
    for name in ("top_high.csv", "top_low.csv"):
        top = pd.read_csv(out / name)
        assert len(top) == 3 and (top["scored_by"] == "champion").all()
    agree = funnel["agreement"]
    assert agree["n"] >= 1 and set(agree) >= {"spearman", "log10_mae", "top_recall"}
    head = json.loads((out / "headline.json").read_text())
    assert head["n_scored"] == len(ranked)
    assert (out / "surrogate_agreement.png").stat().st_size > 1000
