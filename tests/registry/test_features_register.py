"""register: the `features` strategy (frozen encoder + scikit-learn head as arrays) is registrable.

Tiny in-code members (CGCNN encoder + random forest on its embeddings), a scratch MLflow store;
the ensemble goes through candidate choice, the enforced baseline gate, registration and the
verified load of ``predict``/``screen`` (nothing unpickled), and predicts what its fold
regressors predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import registry_testkit as kit

pytestmark = pytest.mark.integration

DS = "paraisite_d1"


def _graphs(structures: list[Any]) -> list[Any]:
    from kappaflow.graphs.build import crystal_to_graph
    from kappaflow.structure.crystal import CrystalArrays

    return [
        crystal_to_graph(CrystalArrays.from_structure(s), kit.CUTOFF, kit.MAX_NEIGHBORS)
        for s in structures
    ]


def write_features_folds(paths: list[Path]) -> tuple[Any, list[Any]]:
    """Overwrite ``paths`` with `features` fold members as the finetune stage exports them.

    Returns:
        ``(frozen encoder model, fitted EmbeddingRegressor of each fold)``.
    """
    import torch

    from kappaflow.models import build_model
    from kappaflow.training.export import save_model
    from kappaflow.training.target_transform import TargetTransform
    from kappaflow.transfer import EmbeddingRegressor, extract_embeddings

    rows = kit.training_structures()
    torch.manual_seed(3)
    model = build_model(kit.TINY_CGCNN, 1)
    model.freeze_encoder(0)
    X = extract_embeddings(model, _graphs([s for _, s, _ in rows]))
    kappa = np.array([k for _, _, k in rows])  # W/m/K
    regs = []
    for k, path in enumerate(paths):
        train = np.array([i for i in range(len(rows)) if i % len(paths) != k])
        params = {"n_estimators": 25, "min_samples_leaf": 1, "max_features": 0.5}
        reg = EmbeddingRegressor("random_forest", params, seed=k).fit(X[train], kappa[train])
        model.head = reg.to_head()
        meta = {"strategy": "features", "fold": path.stem, "regressor": reg.name}
        save_model(path, model, TargetTransform(["log10"], ["kappa"]), kit.TINY_CGCNN, meta)
        regs.append(reg)
    return model, regs


def test_features_is_registered_when_it_is_the_best_transferred_strategy(tiny_project):
    from kappaflow.registry.champion import load_champion, resolve_model
    from kappaflow.registry.predictor import COLUMNS, item_from_cif, predict_cifs
    from kappaflow.stages.register import register_stage, select_candidate
    from kappaflow.transfer import extract_embeddings

    root, cfg = tiny_project
    cfg.registry.gate.enforce = True  # the real gate: features beats both baselines
    kit.write_baseline(root, "median", DS, 0.60)
    kit.write_baseline(root, "magpie_rf", DS, 0.50)
    kit.write_candidate(root, "finetune", DS, 0.30)
    encoder, regs = write_features_folds(kit.write_candidate(root, "features", DS, 0.20))

    cand = select_candidate(cfg)
    assert cand.strategy == "features" and cand.considered["finetune"] == 0.30
    assert [p.name for p in cand.members] == ["repeat0-fold0.pt", "repeat0-fold1.pt"]

    out = register_stage(cfg)
    assert out["candidate_strategy"] == "features" and out["promoted"]
    assert out["gate"]["passed"] and out["gate"]["enforced"]

    # loaded as predict / screen do: downloaded, digests verified, built by this kappaflow
    uri, info = resolve_model(cfg)
    assert info["strategy"] == "features" and info["pinned"] is not None
    loaded = load_champion(uri, "cpu", info)
    assert loaded.ensemble.n_members == 2 and loaded.ensemble.calibration is not None
    cifs = [kit.cif(kit.nacl()), kit.cif(kit.silicon()), "data_broken\n"]
    frame = predict_cifs(loaded.ensemble, loaded.domain, cifs, ["nacl", "si", "bad"])
    assert list(frame.columns) == list(COLUMNS)
    good, bad = frame.iloc[:2], frame.iloc[2]
    assert np.isfinite(good[["kappa", "log10_kappa", "sigma_log10"]].to_numpy()).all()
    assert (good.kappa_lo68 < good.kappa).all() and (good.kappa < good.kappa_hi68).all()
    assert (good.kappa_lo95 <= good.kappa_lo68).all() and np.isnan(bad.kappa) and bad.error

    # κ = 10**mean over folds of log10 κ of each fold's regressor on the encoder's embeddings
    items = [item_from_cif(cifs[0], "nacl", kit.CUTOFF), item_from_cif(cifs[1], "si", kit.CUTOFF)]
    X = extract_embeddings(encoder, [loaded.ensemble.featurize(it.crystal, it.id) for it in items])
    members = np.log10(np.stack([reg.predict(X) for reg in regs], axis=1))
    np.testing.assert_allclose(good.log10_kappa, members.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(good.sigma_log10, members.std(axis=1, ddof=1), atol=1e-6)
