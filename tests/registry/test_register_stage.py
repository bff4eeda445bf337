"""register stage: candidate choice, registration, gated promotion, champion.json (tiny models)."""

from __future__ import annotations

import json

import pytest
import registry_testkit as kit

pytestmark = pytest.mark.integration

DS = "paraisite_d1"
NAME = "kappaflow-kappa"


def _versions(client):
    return {v.version: v for v in client.search_model_versions(f"name = '{NAME}'")}


def test_candidate_is_the_best_transferred_strategy_with_fold_models(tiny_project):
    from kappaflow.stages.register import select_candidate

    root, cfg = tiny_project
    kit.write_candidate(root, "finetune", DS, 0.30)
    kit.write_candidate(root, "freeze", DS, 0.25)
    kit.write_candidate(root, "scratch", DS, 0.05)  # better, but not transfer learning
    features = root / "models/finetune/features" / DS
    features.mkdir(parents=True)  # cv.json but no fold models (an incomplete finetune run)
    (features / "cv.json").write_text(json.dumps({"summary": {"log10_mae_mean": 0.01}}))
    running = kit.write_candidate(root, "two_stage", DS, 0.02)  # finetune still running:
    running[-1].unlink()  # fewer fold models than cv.json folds
    cand = select_candidate(cfg)
    assert cand.strategy == "freeze" and cand.metric == 0.25
    assert [p.name for p in cand.members] == ["repeat0-fold0.pt", "repeat0-fold1.pt"]
    assert cand.considered["scratch"].startswith("excluded")
    assert "no fold models" in cand.considered["features"]
    assert cand.considered["two_stage"] == "1 fold models but 2 folds in cv.json"
    assert cand.considered["finetune"] == 0.30

    cfg.registry.dataset = "paraisite_d2"
    with pytest.raises(FileNotFoundError, match="no transferred strategy"):
        select_candidate(cfg)
    cfg.registry.dataset = "scan_pool"  # unlabeled: not an evaluation dataset
    with pytest.raises(ValueError, match="not an evaluation dataset"):
        select_candidate(cfg)


def test_worse_candidate_never_moves_the_champion(tiny_project):
    from mlflow import MlflowClient

    from kappaflow.stages.register import register_stage

    root, cfg = tiny_project
    champion_file = root / "models/champion.json"

    kit.write_candidate(root, "finetune", DS, 0.30, seed=1)
    first = register_stage(cfg)
    assert first["promoted"] and first["candidate_version"] == 1
    assert first["aliases"] == {"champion": 1, "challenger": None}
    record = json.loads(champion_file.read_text())
    assert record["version"] == 1 and record["uri"] == f"models:/{NAME}/1"
    assert record["value"] == pytest.approx(0.30) and record["dataset"] == DS
    before = champion_file.read_bytes()

    # a second run with a worse configuration: new version, champion stays, it is the runner-up
    kit.write_candidate(root, "finetune", DS, 0.40, seed=2)
    worse = register_stage(cfg)
    assert not worse["promoted"] and worse["candidate_version"] == 2
    assert worse["aliases"] == {"champion": 1, "challenger": 2}
    assert champion_file.read_bytes() == before  # screen (its DVC dependant) does not rerun
    client = MlflowClient()
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["decision"].startswith("kept champion")
    assert float(v2.tags["candidate_log10_mae"]) == pytest.approx(0.40)
    assert float(v2.tags["champion_log10_mae"]) == pytest.approx(0.30)
    assert v2.tags["strategy"] == "finetune" and v2.tags["dataset"] == DS
    assert v2.tags["protocol_digest"] == client.get_model_version(NAME, "1").tags["protocol_digest"]

    # the same ensemble again: no duplicate version
    again = register_stage(cfg)
    assert again["candidate_version"] == 2 and len(_versions(client)) == 2
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1

    # a better strategy: promoted, the old champion becomes the challenger
    kit.write_candidate(root, "freeze", DS, 0.20, seed=3)
    better = register_stage(cfg)
    assert better["promoted"] and better["aliases"] == {"champion": 3, "challenger": 1}
    assert json.loads(champion_file.read_text())["version"] == 3
    assert "beats champion 0.3000" in client.get_model_version(NAME, "3").tags["decision"]
    decision = json.loads((root / "reports/registry/decision.json").read_text())
    assert decision["promoted"] and decision["champion_log10_mae_before"] == pytest.approx(0.30)


def test_champion_on_another_dataset_is_not_comparable(tiny_project):
    from kappaflow.stages.register import register_stage

    root, cfg = tiny_project
    kit.write_candidate(root, "finetune", DS, 0.10, seed=1)
    register_stage(cfg)
    kit.write_prepared(root, "paraisite_d2", kit.prepared_table(kit.training_structures()[:4]))
    kit.write_candidate(root, "finetune", "paraisite_d2", 0.50, seed=2)
    cfg.registry.dataset = "paraisite_d2"
    out = register_stage(cfg)
    assert out["promoted"] and "not comparable" in out["decision"]
    assert "dataset paraisite_d1 vs paraisite_d2" in out["decision"]
    assert out["aliases"] == {"champion": 2, "challenger": 1}


def test_gate_blocks_a_candidate_that_loses_to_a_baseline(tiny_project):
    from mlflow import MlflowClient

    from kappaflow.stages.register import register_stage
    from kappaflow.stages.screen import screen_stage

    root, cfg = tiny_project
    cfg.registry.gate.enforce = True
    kit.write_candidate(root, "finetune", DS, 0.30, seed=1)
    kit.write_baseline(root, "median", DS, 0.60)
    kit.write_baseline(root, "magpie_rf", DS, 0.20)  # the random forest is better
    out = register_stage(cfg)
    assert not out["promoted"] and out["decision"].startswith("no champion:")
    assert "does not beat magpie_rf" in out["decision"] and "Δ log10_mae +0.100" in out["decision"]
    assert out["gate"]["comparisons"]["median"]["mean_diff"] == pytest.approx(-0.30)
    record = json.loads((root / "models/champion.json").read_text())
    assert record["version"] is None and "magpie_rf" in record["no_champion"]
    v1 = MlflowClient().get_model_version(NAME, "1")
    assert v1.tags["gated"] == "false" and "folds_log10_mae" in v1.tags
    decision_md = (root / "reports/registry/decision.md").read_text()
    assert "FAILED" in decision_md and "only transferred strategy" in decision_md
    summary = screen_stage(cfg)  # no champion: nothing scored, the reason written, no crash
    assert summary["n_scored"] == 0 and "no champion" in summary["no_champion"]
    assert (root / "reports/screen/ranked.csv").read_text().startswith("rank,")

    kit.write_candidate(root, "freeze", DS, 0.10, seed=2)  # beats both baselines on every fold
    better = register_stage(cfg)
    assert better["promoted"] and better["gate"]["passed"]
    assert MlflowClient().get_model_version(NAME, "2").tags["gated"] == "true"


def test_candidate_is_chosen_by_validation_rows_never_by_the_test_folds(tiny_project):
    from kappaflow.stages.register import select_candidate

    root, cfg = tiny_project
    # `freeze` is better on the test folds but worse on the validation rows: not chosen
    kit.write_candidate(root, "finetune", DS, 0.30, val_metric=0.20)
    kit.write_candidate(root, "freeze", DS, 0.25, val_metric=0.40)
    cand = select_candidate(cfg)
    assert cand.strategy == "finetune" and cand.metric == 0.30  # its test-fold error, for the gate
    assert cand.considered == cand.considered | {"finetune": 0.20, "freeze": 0.40}
    assert "validation-row" in cand.selected_by and "2 strategies" in cand.selected_by

    # a strategy without a validation-row score is left out, with the reason
    kit.write_candidate(root, "two_stage", DS, 0.01, val_metric=None)
    cand = select_candidate(cfg)
    assert cand.strategy == "finetune"
    assert "no validation-row score" in cand.considered["two_stage"]

    # several strategies and none scored on validation rows: refused, never chosen by the tests
    for strategy in ("finetune", "freeze"):
        kit.write_candidate(root, strategy, DS, 0.30, val_metric=None)
    with pytest.raises(ValueError, match="test folds must not choose"):
        select_candidate(cfg)

    # a single eligible strategy needs no choice
    for strategy in ("freeze", "two_stage"):
        (root / "models/finetune" / strategy / DS / "cv.json").unlink()
    cand = select_candidate(cfg)
    assert cand.strategy == "finetune" and cand.considered["finetune"] == "the only candidate"
    assert "only transferred strategy" in cand.selected_by
