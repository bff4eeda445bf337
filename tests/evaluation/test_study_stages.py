"""extrapolate and pretrain_size stages end to end (tiny settings, real κ data)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from stage_testkit import prepare_tiny_pretrained


def test_size_points_validate() -> None:
    from kappaflow.stages.pretrain_size import size_points

    cfg = OmegaConf.create(
        {
            "pretrain": {"runs": {"a": {}, "b": {}}},
            "evaluation": {"pretrain_size": {"runs": {"1.0": "a", "0.0": None, "0.3": "b"}}},
        }
    )
    assert size_points(cfg) == [(0.0, None), (0.3, "b"), (1.0, "a")]
    for runs, match in (
        ({"1.5": "a"}, "outside"),
        ({"0.0": "a"}, "null iff"),
        ({"0.5": None}, "null iff"),
        ({"0.5": "zzz"}, "not a pretrain run"),
    ):
        cfg.evaluation.pretrain_size.runs = runs
        with pytest.raises(ValueError, match=match):
            size_points(cfg)


def test_with_strategy_composes_a_missing_recipe() -> None:
    from kappaflow.config import compose
    from kappaflow.transfer.fit_predict import with_strategy

    cfg = compose(["transfer=freeze"])
    assert list(cfg.transfer.strategies) == ["freeze"]
    out = with_strategy(cfg, "finetune", pretrained="other")
    assert out.transfer.strategies.finetune.pretrained == "other"
    assert out.transfer.strategies.finetune.encoder_lr_mult == 0.1  # from conf/transfer
    assert list(cfg.transfer.strategies) == ["freeze"]  # the input is not modified
    with pytest.raises(KeyError, match="unknown transfer strategy"):
        with_strategy(cfg, "no_such_recipe")


@pytest.mark.data
@pytest.mark.integration
@pytest.mark.slow
def test_extrapolate_and_pretrain_size_stages(project) -> None:
    from kappaflow.stages.extrapolate import extrapolate_stage
    from kappaflow.stages.pretrain_size import pretrain_size_stage

    root, cfg = project
    prepare_tiny_pretrained(cfg)
    cfg.transfer.strategies.finetune.pretrained = "tiny"
    cfg.evaluation.n_splits, cfg.evaluation.n_repeats = 2, 1
    cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 1, "limit_train_batches": 2})
    cfg.evaluation.extrapolation.datasets = ["paraisite_d1"]
    cfg.evaluation.extrapolation.methods = ["finetune", "magpie_rf"]
    cfg.evaluation.pretrain_size.datasets = ["paraisite_d1"]
    cfg.evaluation.pretrain_size.runs = {"0.0": None, "1.0": "tiny"}

    ext = extrapolate_stage(cfg)
    assert set(ext) == {"finetune/paraisite_d1", "magpie_rf/paraisite_d1"}
    for m in ext.values():
        assert m["n_heldout"] >= 15 and m["n_train"] >= 60  # 95 rows, 80 % quantile, grouped
        assert 0.0 <= m["recall@5"] <= 1.0
    assert "recall@10" in (root / "reports/extrapolation.md").read_text()
    assert (root / "plots/extrapolation/rank_paraisite_d1.png").stat().st_size > 1000

    size = pretrain_size_stage(cfg)
    assert set(size) == {"paraisite_d1/0", "paraisite_d1/1"}
    assert size["paraisite_d1/0"]["recipe"] == "scratch"
    assert size["paraisite_d1/1"]["pretrain_run"] == "tiny"
    assert all(r["log10_mae_mean"] > 0 for r in size.values())
    saved = json.loads((root / "metrics/pretrain_size.json").read_text())
    assert saved == json.loads(json.dumps(size))
    assert (root / "plots/pretrain_size/pretrain_size.png").stat().st_size > 1000


def test_domain_error_by_group_by_hand() -> None:
    """Each method's held-out log10-MAE per group and pooled, on the same rows."""
    import pandas as pd

    from kappaflow.stages.domain import _error_table, error_by_group

    rows = pd.DataFrame({"group": ["a", "a", "b"], "kappa_true": [1.0, 10.0, 100.0]})
    per_method = {
        "good": rows.assign(kappa_pred=[1.0, 10.0, 50.0]),  # errors 0, 0, log10 2
        "bad": rows.assign(kappa_pred=[10.0, 1.0, 1000.0]),  # errors 1, 1, 1
    }
    errors = error_by_group(per_method).set_index("group")
    assert list(errors.index) == ["a", "b", "all"] and list(errors.n) == [2, 1, 3]
    assert errors.loc["a", "good"] == 0.0 and errors.loc["b", "good"] == pytest.approx(0.30103)
    assert errors.loc["all", "good"] == pytest.approx(0.30103 / 3)
    assert errors.loc["all", "bad"] == pytest.approx(1.0)
    assert errors.loc["all", "good within 2x"] == 1.0  # exactly 2x counts as within
    assert errors.loc["all", "bad within 2x"] == 0.0
    table = _error_table(errors.reset_index(), ["good", "bad"])
    assert "| **all held-out rows** | 3 | 0.100 (100 %) | 1.000 (0 %) |" in table
