"""Stacked head: Magpie features from a graph's atoms, blend arithmetic, state round trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pymatgen.core import Composition
from torch_geometric.data import Batch, Data

from kappaflow.features.composition import magpie_features
from kappaflow.models.base import element_counts
from kappaflow.models.sklearn_head import (
    ForestHead,
    RidgeHead,
    UnsupportedHeadError,
    head_from_state,
)
from kappaflow.models.stack_head import StackHead, magpie_from_counts, magpie_table_tensor

# varied stoichiometry, 1 to 6 elements, cells of several formula units
FORMULAS = ["NaCl", "Mg2Si", "Bi2Te3", "CuInSe2", "Li3N", "SrTiO3", "Si", "HgBa2Ca2Cu3O8", "AlN"]


def _counts(formula: str, units: int) -> np.ndarray:
    row = np.zeros(119)
    for el, amount in Composition(formula).items():
        row[el.Z] = amount * units
    return row


def test_magpie_from_counts_equals_the_formula_featurizer() -> None:
    counts = np.stack([_counts(f, 1 + i % 4) for i, f in enumerate(FORMULAS)])
    got = magpie_from_counts(torch.from_numpy(counts), magpie_table_tensor()).numpy()
    want = magpie_features(FORMULAS, dtype=np.float64)
    assert got.shape == want.shape == (len(FORMULAS), 132)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_element_counts_of_a_graph_batch() -> None:
    graphs = [
        Data(z=torch.tensor([11, 17, 11, 17]), num_nodes=4),  # Na2Cl2 cell
        Data(z=torch.tensor([12, 12, 14]), num_nodes=3),  # Mg2Si
    ]
    counts = element_counts(Batch.from_data_list(graphs))
    assert counts.shape == (2, 119) and counts.dtype == torch.float64
    assert counts[0, 11] == 2 and counts[0, 17] == 2 and counts[1, 12] == 2 and counts[1, 14] == 1
    assert counts.sum().item() == 7
    assert element_counts(graphs[1])[0, 12] == 2  # an un-batched graph
    with pytest.raises(ValueError, match="atomic numbers `z`"):
        element_counts(Data(comp=torch.zeros(1, 3)))


def _stack(weights: Any = (0.4, 0.7), bias: float = -0.1) -> StackHead:
    rng = np.random.default_rng(0)
    d = 5
    ridge = RidgeHead(
        rng.normal(size=d), np.ones(d), rng.normal(size=(1, d)), [1.0], [-np.inf], [np.inf]
    )
    # a one-split tree on the mean atomic number (feature 3 of property 0 "Number")
    forest = ForestHead(
        tree_nodes=[3],
        children_left=[1, -1, -1],
        children_right=[2, -1, -1],
        feature=[3, -2, -2],
        threshold=[20.0, -2.0, -2.0],
        value=[[0.0], [1.5], [0.5]],
        in_dim=132,
        clip_lo=[-np.inf],
        clip_hi=[np.inf],
    )
    return StackHead(ridge, forest, weights, [bias], magpie_table_tensor(), [-1.0], [3.0])


def test_blend_is_the_weighted_sum_of_the_routes_clipped() -> None:
    head = _stack()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 5)))
    counts = torch.from_numpy(np.stack([_counts("LiF", 2), _counts("PbTe", 1)]))  # light, heavy
    routes = head.routes(x, counts)
    assert routes[:, 1].tolist() == [1.5, 0.5]  # mean Z 6 <= 20 goes left; PbTe (67) right
    z = head(x, counts)[:, 0]
    expected = np.clip(0.4 * routes[:, 0].numpy() + 0.7 * routes[:, 1].numpy() - 0.1, -1.0, 3.0)
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="element counts"):
        head(x)


def test_state_round_trip_and_refusals() -> None:
    head = _stack()
    rebuilt = head_from_state(head.to_state())
    assert isinstance(rebuilt, StackHead)
    x = torch.zeros(1, 5, dtype=torch.float64)
    counts = torch.from_numpy(_counts("NaCl", 1)[None])
    assert torch.equal(rebuilt(x, counts), head(x, counts))

    state = head.to_state()
    nested = {**state, "structure": state}
    with pytest.raises(UnsupportedHeadError, match="may not be a stack"):
        head_from_state(nested)
    bad = {
        **state,
        "tensors": {**state["tensors"], "weights": torch.tensor([-1.0, 1.0], dtype=torch.float64)},
    }
    with pytest.raises(UnsupportedHeadError, match="weights"):
        head_from_state(bad)
    bad = {
        **state,
        "tensors": {**state["tensors"], "magpie_table": torch.zeros(119, 3, dtype=torch.float64)},
    }
    with pytest.raises(UnsupportedHeadError, match="reads 132 features"):
        head_from_state(bad)
    bad = {**state, "tensors": {**state["tensors"], "code": torch.zeros(1, dtype=torch.float64)}}
    with pytest.raises(UnsupportedHeadError, match="stack head arrays"):
        head_from_state(bad)
    with pytest.raises(UnsupportedHeadError, match="structure route"):
        StackHead(head, head.composition, [1, 1], [0], magpie_table_tensor(), [0], [1])
