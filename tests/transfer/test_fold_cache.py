"""The fold cache is keyed by content: a new encoder retrains, damaged caches are caught."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from stage_testkit import prepare_tiny_pretrained

pytestmark = [pytest.mark.data, pytest.mark.integration, pytest.mark.slow]


def test_new_encoder_retrains_and_damaged_caches_are_caught(project, caplog):
    import torch
    from omegaconf import OmegaConf

    from kappaflow.io_utils import CorruptFileError
    from kappaflow.layout import graph_cache_path
    from kappaflow.stages.finetune import finetune_stage
    from kappaflow.training.export import load_model, save_model
    from kappaflow.transfer.fit_predict import fold_cache_dir

    root, cfg = project
    prepare_tiny_pretrained(cfg)  # TINY_PRETRAIN excludes paraisite_d1 from pretraining
    cfg.transfer.strategies.finetune.pretrained = "tiny"
    cfg.evaluation.n_splits, cfg.evaluation.n_repeats = 2, 1
    cfg.evaluation.trainer = OmegaConf.create({"max_epochs": 1, "limit_train_batches": 4})
    encoder = root / "models/pretrain/tiny.pt"
    out = root / "models/finetune/finetune/paraisite_d1/predictions.csv"

    def run() -> pd.DataFrame:
        finetune_stage(cfg, "finetune", "paraisite_d1")
        return pd.read_csv(out).sort_values("id").reset_index(drop=True)

    first = run()
    work1 = fold_cache_dir(cfg, "finetune", "paraisite_d1")
    folds1 = {p: p.stat().st_mtime_ns for p in work1.glob("fold-*.npy")}
    assert len(folds1) == 2
    again = run()  # same inputs: the finished folds are reused, not retrained
    assert {p: p.stat().st_mtime_ns for p in work1.glob("fold-*.npy")} == folds1
    assert again.kappa_pred.to_numpy() == pytest.approx(first.kappa_pred.to_numpy())

    # another pretrained encoder in the same file (what `-S pretrain.fraction=...` produces)
    model, transform, info = load_model(encoder)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    save_model(encoder, model, transform, info["model_cfg"], info["meta"])
    work2 = fold_cache_dir(cfg, "finetune", "paraisite_d1")
    assert work2 != work1
    second = run()
    assert len(list(work2.glob("fold-*.npy"))) == 2  # both folds trained again
    assert not np.allclose(second.kappa_pred, first.kappa_pred)

    # a truncated fold file: deleted and recomputed, with a warning
    victim = sorted(work2.glob("fold-*.npy"))[0]
    n_test = len(np.load(victim))
    victim.write_bytes(victim.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="kappaflow.transfer.fit_predict"):
        third = run()
    assert "unusable" in caplog.text and victim.name in caplog.text
    assert np.load(victim).shape == (n_test,)
    # the fold resumes from its finished checkpoint: the same predictions come back
    assert third.kappa_pred.to_numpy() == pytest.approx(second.kappa_pred.to_numpy(), rel=1e-5)

    # a truncated graph cache: a clear error naming the file and the rebuild command
    graphs = graph_cache_path(cfg, "paraisite_d1")
    graphs.write_bytes(graphs.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match="dvc repro featurize") as err:
        run()
    assert str(graphs) in str(err.value)
