"""The finetune stage's plan line says what one fold trains."""

from __future__ import annotations

from kappaflow.config import compose
from kappaflow.transfer.fit_predict import fold_work


def test_fold_work_names_epochs_or_the_frozen_head():
    cfg = compose(["+experiment=smoke"])
    assert fold_work(cfg, "freeze", "paraisite_d1").startswith("cgcnn, up to 2 epochs (batch ")
    assert fold_work(cfg, "features", "paraisite_d1") == (
        "ridge on frozen descriptor_mlp embeddings (no epochs)"
    )
    assert "extra trees" in fold_work(cfg, "stack", "paraisite_d1")
    default = fold_work(compose(["transfer=all"]), "scratch", "paraisite_d1")
    assert "early stopping after" in default and "up to 2 epochs" not in default
