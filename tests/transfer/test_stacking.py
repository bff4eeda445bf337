"""stack strategy: inner-fold blend of the frozen-encoder route and the composition forest.

In-code crystals and the tiny frozen CGCNN of conftest.py: the exported member predicts what the
in-fold stack predicted (load_model, export.predict, the registry ensemble); the blend weights
come from the training rows only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kappa_testkit import CUTOFF, MAX_NEIGHBORS, split
from registry_testkit import TINY_CGCNN as CARD

from kappaflow.models.stack_head import StackHead
from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
from kappaflow.training.export import SKLEARN_HEAD_FORMAT, load_model, predict, save_model
from kappaflow.training.target_transform import TargetTransform
from kappaflow.transfer import extract_embeddings
from kappaflow.transfer.stacking import StackedRegressor, element_count_matrix, uses_stacking

STACK = {
    "name": "features",
    "regressor": "ridge",
    "regressor_params": {"ridge": {"alphas": [0.01, 1.0, 100.0]}},
    "stack": {"inner_folds": 3, "composition": {"n_estimators": 30}},
}


def _inputs(graphs: list[Any], encoder: torch.nn.Module) -> tuple[np.ndarray, ...]:
    emb = extract_embeddings(encoder, graphs, batch_size=7)
    counts = element_count_matrix(graphs, batch_size=5)
    kappa = np.array([float(g.y[0, 0]) for g in graphs])
    groups = np.array([f"g{i // 2}" for i in range(len(graphs))])  # two rows per material
    return emb, counts, kappa, groups


def test_config_switch() -> None:
    assert uses_stacking(STACK)
    assert not uses_stacking({**STACK, "stack": None})
    assert not uses_stacking({**STACK, "name": "finetune"})
    with pytest.raises(ValueError, match="unknown stack keys"):
        StackedRegressor.from_cfg({**STACK, "stack": {"folds": 3}})


def test_exported_stack_predicts_what_the_fold_stack_predicted(
    encoder: torch.nn.Module, graphs: list[Any], tmp_path: Path
) -> None:
    emb, counts, kappa, groups = _inputs(graphs, encoder)
    tr, _, te = split(len(graphs))
    stack = StackedRegressor.from_cfg(STACK, seed=0).fit(emb[tr], counts[tr], kappa[tr], groups[tr])
    described = stack.describe()
    assert described["weight_structure"] >= 0 and described["weight_composition"] >= 0
    expected = stack.predict(emb[te], counts[te])
    assert np.isfinite(expected).all() and (expected > 0).all()

    encoder.head = stack.to_head()
    path = save_model(
        tmp_path / "repeat0-fold0.pt", encoder, TargetTransform(["log10"], ["kappa"]), CARD
    )
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == SKLEARN_HEAD_FORMAT and payload["head"]["kind"] == "stack"
    model, transform, _ = load_model(path)
    assert isinstance(model.head, StackHead)
    ids, got = predict(model, transform, [graphs[i] for i in te], batch_size=4)
    assert ids == [f"m-{i}" for i in te]
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-6)

    ens = KappaEnsemble.from_files([path, path], GraphSettings(CUTOFF, MAX_NEIGHBORS), "cpu")
    out = ens.predict([graphs[i] for i in te])
    np.testing.assert_allclose(out.log10_kappa, np.log10(expected), atol=1e-6)


def test_blend_weights_see_only_the_rows_given(encoder: torch.nn.Module, graphs: list[Any]) -> None:
    """The held-out rows' κ cannot move the weights or the predictions (they are not passed)."""
    emb, counts, kappa, groups = _inputs(graphs, encoder)
    tr, _, te = split(len(graphs))
    a = StackedRegressor.from_cfg(STACK, seed=0).fit(emb[tr], counts[tr], kappa[tr], groups[tr])
    changed = kappa.copy()
    changed[te] *= 1000.0
    b = StackedRegressor.from_cfg(STACK, seed=0).fit(emb[tr], counts[tr], changed[tr], groups[tr])
    assert a.describe() == b.describe()
    np.testing.assert_array_equal(a.predict(emb[te], counts[te]), b.predict(emb[te], counts[te]))
    # the training rows' κ do move them
    c = StackedRegressor.from_cfg(STACK, seed=0).fit(
        emb[tr], counts[tr], kappa[tr] ** 0.5, groups[tr]
    )
    assert c.describe() != a.describe()


def test_bad_inputs_are_refused(encoder: torch.nn.Module, graphs: list[Any]) -> None:
    emb, counts, kappa, groups = _inputs(graphs, encoder)
    reg = StackedRegressor.from_cfg(STACK, seed=0)
    with pytest.raises(ValueError, match="κ > 0"):
        reg.fit(emb, counts, -kappa, groups)
    with pytest.raises(ValueError, match="rows differ"):
        reg.fit(emb[:-1], counts, kappa, groups)
    with pytest.raises(ValueError, match="fewer than inner_folds"):
        reg.fit(emb[:4], counts[:4], kappa[:4], groups[:4])
    with pytest.raises(RuntimeError, match="before fit"):
        reg.to_head()
