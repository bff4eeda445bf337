"""A frozen encoder shared by every fold runs once per batch, with the same predictions."""

from __future__ import annotations

import copy

import numpy as np
import registry_testkit as kit
import torch

from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble, shared_encoders
from kappaflow.structure.crystal import CrystalArrays


def _members(tmp_path):
    from kappaflow.training.export import load_model

    models, tfs = [], []
    for p in kit.write_members(tmp_path, n=3):
        m, tf, _ = load_model(p, map_location="cpu")
        models.append(m)
        tfs.append(tf)
    return models, tfs


def test_identical_encoders_are_grouped_and_distinct_ones_are_not(tmp_path):
    models, _ = _members(tmp_path)
    assert shared_encoders(models) == [0, 1, 2]  # three random initialisations
    twin = copy.deepcopy(models[0])
    twin.head = copy.deepcopy(models[1].head)  # same encoder, another head (a stack fold)
    assert shared_encoders([models[0], models[1], twin]) == [0, 1, 0]
    nudged = copy.deepcopy(models[0])
    with torch.no_grad():
        next(nudged.encoder.parameters()).view(-1)[0] += 1e-6
    assert shared_encoders([models[0], nudged]) == [0, 1]  # one weight differs: not shared


def test_shared_encoder_is_run_once_and_predictions_are_unchanged(tmp_path):
    models, tfs = _members(tmp_path)
    folds = [copy.deepcopy(models[0]) for _ in range(3)]
    for fold, other in zip(folds[1:], models[1:], strict=True):
        fold.head = copy.deepcopy(other.head)
    graph = GraphSettings(kit.CUTOFF, kit.MAX_NEIGHBORS)
    shared = KappaEnsemble(folds, tfs, kit.TINY_CGCNN, graph, "cpu")
    assert shared.encoder_of == [0, 0, 0]
    data = [
        shared.featurize(CrystalArrays.from_structure(s)) for _, s, _ in kit.training_structures()
    ]
    calls = []
    enc = folds[0].encoder
    handle = enc.register_forward_hook(lambda *_: calls.append(1))
    out = shared.predict(data)
    handle.remove()
    assert len(calls) == 1
    separate = KappaEnsemble(folds, tfs, kit.TINY_CGCNN, graph, "cpu")
    separate.encoder_of = [0, 1, 2]  # the per-member path
    ref = separate.predict(data)
    np.testing.assert_allclose(out.members_log10, ref.members_log10, rtol=1e-6)
    np.testing.assert_allclose(out.embedding, ref.embedding, rtol=1e-6)
