"""The model card owns its graph: input kind, and cache meta checked against the card on load."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from kappaflow.models import (
    GraphMismatchError,
    build_model,
    check_graph_settings,
    encoder_class,
    input_kind,
)
from kappaflow.models.cgcnn import CGCNNEncoder
from kappaflow.models.descriptor_mlp import DescriptorMLPEncoder
from kappaflow.models.megnet import MEGNetEncoder
from kappaflow.training.inputs import load_model_inputs

CGCNN = {"name": "cgcnn", "cutoff": 8.0, "max_neighbors": 12}
MEGNET = {"name": "megnet", "cutoff": 5.0, "max_neighbors": 12}
MLP = {"name": "descriptor_mlp", "cutoff": None, "max_neighbors": None}


def _write_cache(path: Path, cutoff: float, max_neighbors: int | None) -> Path:
    """A one-graph cache file (one atom, no edges) with the given meta."""
    store = {
        "z": torch.tensor([11], dtype=torch.int64),
        "edge_index": torch.zeros((2, 0), dtype=torch.int32),
        "edge_dist": torch.zeros(0, dtype=torch.float32),
        "y": torch.tensor([[1.5]], dtype=torch.float32),
        "node_ptr": torch.tensor([0, 1], dtype=torch.int64),
        "edge_ptr": torch.tensor([0, 0], dtype=torch.int64),
        "ids": ["m-0"],
        "meta": {
            "format_version": 1,
            "cutoff": float(cutoff),
            "max_neighbors": max_neighbors,
            "target_names": ["kappa"],
            "n_graphs": 1,
            "n_nodes": 1,
            "n_edges": 0,
            "n_isolated_atoms": 1,
        },
    }
    torch.save(store, path)
    return path


TABLE = pd.DataFrame({"id": ["m-0"], "formula": ["Na"], "kappa": [1.5]})


def test_input_kind_is_owned_by_the_encoder_class() -> None:
    assert encoder_class(CGCNN) is CGCNNEncoder and input_kind(CGCNN) == "graph"
    assert encoder_class("megnet") is MEGNetEncoder and input_kind(MEGNET) == "graph"
    assert encoder_class(MLP) is DescriptorMLPEncoder and input_kind(MLP) == "composition"
    # not inferred from the cutoff key any more
    assert input_kind({"name": "cgcnn"}) == "graph"
    with pytest.raises(ValueError, match="unknown model name"):
        input_kind({"name": "nope", "cutoff": 8.0})
    assert CGCNNEncoder.filters_edges is False and MEGNetEncoder.filters_edges is True


def test_check_graph_settings_rules() -> None:
    meta = {"cutoff": 8.0, "max_neighbors": 12}
    check_graph_settings(CGCNN, meta)
    check_graph_settings(MEGNET, meta)  # 8 Å cache >= MEGNet's 5 Å: it filters edges itself
    check_graph_settings(MLP, meta)  # composition: no graph
    check_graph_settings(MEGNET, {"cutoff": 5.0, "max_neighbors": 12})
    with pytest.raises(GraphMismatchError, match=r"cutoff=6\.0 Å but model 'cgcnn' needs cutoff=8"):
        check_graph_settings(CGCNN, {"cutoff": 6.0, "max_neighbors": 12})
    with pytest.raises(GraphMismatchError, match="cutoff=9.0 Å"):
        check_graph_settings(CGCNN, {"cutoff": 9.0, "max_neighbors": 12})
    with pytest.raises(GraphMismatchError, match=r"needs cutoff >= 5\.0 Å"):
        check_graph_settings(MEGNET, {"cutoff": 4.0, "max_neighbors": 12})
    for card in (CGCNN, MEGNET):
        with pytest.raises(GraphMismatchError, match="max_neighbors=8 .*max_neighbors=12"):
            check_graph_settings(card, {"cutoff": 8.0, "max_neighbors": 8})
    with pytest.raises(GraphMismatchError, match="max_neighbors=None"):
        check_graph_settings(CGCNN, {"cutoff": 8.0, "max_neighbors": None})


def test_load_model_inputs_rejects_a_mismatched_cache(tmp_path: Path) -> None:
    path = _write_cache(tmp_path / "d.pt", cutoff=8.0, max_neighbors=12)
    for card in (CGCNN, MEGNET):
        inputs = load_model_inputs(card, TABLE, ["kappa"], path)
        assert len(inputs.dataset) == 1
    with pytest.raises(GraphMismatchError) as err:
        load_model_inputs({**CGCNN, "cutoff": 6.0}, TABLE, ["kappa"], path)
    msg = str(err.value)
    assert str(path) in msg and "cutoff=8.0" in msg and "cutoff=6.0" in msg
    assert "dvc repro featurize" in msg
    with pytest.raises(GraphMismatchError, match="dvc repro featurize"):
        load_model_inputs({**MEGNET, "cutoff": 9.0}, TABLE, ["kappa"], path)
    small = _write_cache(tmp_path / "small.pt", cutoff=8.0, max_neighbors=6)
    with pytest.raises(GraphMismatchError, match="max_neighbors=6 .*max_neighbors=12"):
        load_model_inputs(MEGNET, TABLE, ["kappa"], small)
    assert issubclass(GraphMismatchError, ValueError)


def test_ensemble_checks_its_graph_settings() -> None:
    from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
    from kappaflow.training.target_transform import TargetTransform

    card = {**CGCNN, "atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8}
    members = [build_model(card, 1), build_model(card, 1)]
    tfs = [TargetTransform(["log10"], ["kappa"]) for _ in members]
    ens = KappaEnsemble(members, tfs, card, GraphSettings(8.0, 12), device="cpu")
    assert ens.input_kind == "graph"
    with pytest.raises(GraphMismatchError, match="ensemble's graph settings"):
        KappaEnsemble(members, tfs, card, GraphSettings(5.0, 12), device="cpu")


def test_composed_config_builds_the_cache_the_graph_models_need() -> None:
    """conf/graphs reads models.cgcnn; every graph model card fits the shared cache."""
    from omegaconf import OmegaConf

    from kappaflow.config import compose

    cfg = compose()
    OmegaConf.resolve(cfg)
    assert cfg.graphs.cutoff == cfg.models.cgcnn.cutoff
    assert cfg.graphs.max_neighbors == cfg.models.cgcnn.max_neighbors
    meta = {"cutoff": cfg.graphs.cutoff, "max_neighbors": cfg.graphs.max_neighbors}
    for card in cfg.models.values():
        check_graph_settings(card, meta, source="conf/graphs")
