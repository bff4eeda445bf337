"""finetune (every strategy) + evaluate stages end to end, tiny settings, on real κ data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytestmark = [pytest.mark.data, pytest.mark.integration, pytest.mark.slow]


def test_every_strategy_then_the_report(project, monkeypatch):
    from omegaconf import OmegaConf

    import kappaflow.transfer.fit_predict as fp
    from kappaflow.stages.evaluate import evaluate_stage
    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.finetune import finetune_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage
    from kappaflow.stages.pretrain import pretrain_stage

    root, cfg = project
    for name in ("perov5_val", "paraisite_d1", "aflow_agl", "ju2021_sps"):
        ingest_stage(cfg, name)
        prepare_stage(cfg, name)
    for name in ("perov5_val", "paraisite_d1", "aflow_agl"):
        featurize_stage(cfg, name)
    cfg.pretrain.exclude_materials_of = ["paraisite_d1"]
    pretrain_stage(cfg, "tiny")
    pretrain_stage(cfg, "tiny_megnet")
    pretrain_stage(cfg, "descriptor_mlp_sps")
    for s in ("finetune", "freeze", "stack"):
        cfg.transfer.strategies[s].pretrained = "tiny"
    assert cfg.transfer.strategies.two_stage.model == "megnet"  # ParAIsite: MEGNet -> AGL -> κ
    cfg.transfer.strategies.two_stage.pretrained = "tiny_megnet"
    cfg.evaluation.datasets = ["paraisite_d1"]
    cfg.evaluation.n_splits, cfg.evaluation.n_repeats = 2, 1
    cfg.evaluation.baselines = ["median"]
    cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 1, "limit_train_batches": 4})

    stack_fits: list[set[str]] = []  # the material keys each fold's stack was fitted on

    class SpyStack(fp.StackedRegressor):
        def fit(self, embeddings, counts, kappa, groups):
            stack_fits.append(set(map(str, groups)))
            return super().fit(embeddings, counts, kappa, groups)

    monkeypatch.setattr(fp, "StackedRegressor", SpyStack)
    for strategy in cfg.transfer.strategies:
        out = finetune_stage(cfg, strategy, "paraisite_d1")
        assert out["mlflow_run_id"]
        assert out["summary"]["n_folds"] == 2, strategy
        preds = pd.read_csv(root / f"models/finetune/{strategy}/paraisite_d1/predictions.csv")
        assert len(preds) == 95 and (preds.kappa_pred > 0).all()  # every row predicted once
        # each fold's validation rows scored too: what register chooses among strategies by
        cv = json.loads((root / f"models/finetune/{strategy}/paraisite_d1/cv.json").read_text())
        assert all(f["val_metrics"]["log10_mae"] >= 0 for f in cv["folds"]), strategy
        assert cv["selection"]["n_val_rows"] == sum(f["n_val"] for f in cv["folds"]) > 0
        folds = sorted(
            p.name for p in (root / f"models/finetune/{strategy}/paraisite_d1").glob("folds/*.pt")
        )
        # every fold model exported (features: frozen encoder + its sklearn ridge as arrays)
        assert folds == ["repeat0-fold0.pt", "repeat0-fold1.pt"], strategy

    # an exported fold model, loaded weights-only, reproduces its out-of-fold predictions
    from kappaflow.layout import graph_cache_path, kappa_table, with_structures
    from kappaflow.training.export import load_model, predict
    from kappaflow.training.inputs import RowsView, load_model_inputs

    table, _ = kappa_table(cfg, "paraisite_d1")
    stacking = [s for s, node in cfg.transfer.strategies.items() if node.get("stack")]
    assert stacking == ["stack", "sevennet_stack"]
    for strategy, card, cache in (
        ("finetune", cfg.models.cgcnn, graph_cache_path(cfg, "paraisite_d1")),
        ("two_stage", cfg.models.megnet, graph_cache_path(cfg, "paraisite_d1")),
        ("features", cfg.models.descriptor_mlp, None),
        ("stack", cfg.models.cgcnn, graph_cache_path(cfg, "paraisite_d1")),
        ("sevennet_stack", cfg.models.sevennet, None),  # atom graphs from the structures
        ("sevennet_finetune", cfg.models.sevennet, None),
    ):
        out = root / "models/finetune" / strategy / "paraisite_d1"
        model, transform, info = load_model(out / "folds/repeat0-fold1.pt")
        assert info["meta"]["fold"] == "repeat0-fold1"
        assert info["model_cfg"]["name"] == card.name, strategy
        preds = pd.read_csv(out / "predictions.csv")
        fold = preds[(preds.repeat == 0) & (preds.fold == 1)]
        rows = table.index[table.id.isin(fold.id)].to_numpy()
        rows_in = with_structures(cfg, "paraisite_d1", table) if card.name == "sevennet" else table
        inputs = load_model_inputs(card, rows_in, ["kappa"], cache)
        ids, kappa = predict(model, transform, RowsView(inputs.dataset, rows), 64)
        expected = fold.set_index("id").loc[ids, "kappa_pred"].to_numpy()
        assert kappa[:, 0] == pytest.approx(expected, rel=1e-4), strategy
        if strategy in stacking:  # blend weights from inner folds of the training part, >= 0
            from kappaflow.data.leakage import material_keys

            keys = dict(zip(table.id.astype(str), material_keys(table), strict=True))
            # one fit per fold and stacking strategy (in strategy order), never on a test material
            assert len(stack_fits) == 2 * len(stacking)
            mine = stack_fits[2 * stacking.index(strategy) : 2 * stacking.index(strategy) + 2]
            for k, fitted in enumerate(mine):
                test_ids = preds[(preds.repeat == 0) & (preds.fold == k)].id.astype(str)
                assert fitted and not fitted & {keys[i] for i in test_ids}
            stack = info["meta"]["stack"]
            assert min(stack["weight_structure"], stack["weight_composition"]) >= 0
            assert stack["inner_log10_mae_stack"] > 0

    # the non-κ section reads finetune_other's outputs (same layout); D1 stands in for them here
    cfg.evaluation.other_targets = ["paraisite_d1"]
    metrics = evaluate_stage(cfg)
    assert set(metrics) == {
        "baseline:median/paraisite_d1",
        *(f"{s}/paraisite_d1" for s in cfg.transfer.strategies),
    }
    report = (root / "reports/transfer.md").read_text()
    assert "baseline:median" in report and "two_stage" in report
    assert "not comparable" in report  # published numbers are flagged
    assert "Non-κ transfer check" in report and "| paraisite_d1 | finetune | 2 |" in report
    assert "scratch" in report.split("Does transfer beat")[1]
    chooser = report.split("what chooses the registered strategy")[1].split("##")[0]
    assert "**paraisite_d1**: " in chooser and "validation rows)" in chooser
    assert "baseline:" not in chooser  # only strategies compete for the registry
    saved = json.loads((root / "metrics/transfer.json").read_text())
    assert saved["scratch/paraisite_d1"]["log10_mae_mean"] > 0
    assert (root / "plots/transfer/strategy_comparison.png").stat().st_size > 1000


def test_two_stage_skips_its_own_first_stage_set(project):
    from kappaflow.stages.finetune import finetune_stage

    root, cfg = project
    out = finetune_stage(cfg, "two_stage", "aflow_agl")
    assert "earlier stage" in out["skipped"]
    assert json.loads((root / "models/finetune/two_stage/aflow_agl/cv.json").read_text())["skipped"]


def test_non_kappa_target_trains_through_the_same_code(project):
    """finetune_other: refractive index n (log10-learned), graph cache keyed by its own name."""
    import numpy as np
    from omegaconf import OmegaConf

    from kappaflow.evaluation.protocol import cross_validate
    from kappaflow.layout import kappa_table, target_name
    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage
    from kappaflow.transfer.fit_predict import build_fit_predict

    root, cfg = project
    ingest_stage(cfg, "matbench_dielectric")
    prepare_stage(cfg, "matbench_dielectric")
    featurize_stage(cfg, "matbench_dielectric")
    assert target_name(cfg, "matbench_dielectric") == "refractive_index"
    table, name = kappa_table(cfg, "matbench_dielectric")
    assert name == "refractive_index" and (table.kappa == table.refractive_index).all()
    assert (table.kappa >= 1.0).all()  # n >= 1
    table = table.iloc[:80].reset_index(drop=True)
    cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 1, "limit_train_batches": 2})
    fp = build_fit_predict(cfg, "scratch", "matbench_dielectric", table, root / "work")
    res = cross_validate(table, fp, n_splits=2, n_repeats=1, seed=0, progress=False)
    assert res.summary["n_folds"] == 2 and np.isfinite(res.summary["log10_mae_mean"])
    with pytest.raises(ValueError, match="no κ target"):
        target_name(cfg, "mp_eform_bandgap")  # e_form can be negative: not a log10 target
