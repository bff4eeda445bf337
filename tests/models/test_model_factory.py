"""Tests of build_model and the model cards conf/models/*.yaml."""

from __future__ import annotations

import pytest
import torch
from model_testkit import load_model_cfg
from omegaconf import OmegaConf

from kappaflow.models import KappaModel, build_model, model_names
from kappaflow.models.cgcnn import CGCNNEncoder
from kappaflow.models.descriptor_mlp import DescriptorMLPEncoder
from kappaflow.models.megnet import MEGNetEncoder

PUBLISHED = {"cgcnn": "0.039 eV/atom", "megnet": "0.028 eV/atom", "descriptor_mlp": "Ju et al."}


@pytest.mark.parametrize("name", ["cgcnn", "megnet", "descriptor_mlp"])
def test_model_cards_build(name: str) -> None:
    cfg = load_model_cfg(name)
    assert cfg.name == name and name in model_names()
    assert "cutoff" in cfg and "max_neighbors" in cfg
    assert PUBLISHED[name] in cfg.description
    torch.manual_seed(0)
    model = build_model(cfg, n_targets=3)
    assert isinstance(model, KappaModel) and model.name == name
    assert model.n_targets == 3


def test_paper_sizes() -> None:
    cgcnn = build_model(load_model_cfg("cgcnn"), 1)
    assert isinstance(cgcnn.encoder, CGCNNEncoder)
    assert len(cgcnn.encoder.blocks) == 3 and cgcnn.embed_dim == 128
    assert cgcnn.encoder.expansion.out_dim == 41  # 0..8 Å, step 0.2 Å
    assert cgcnn.encoder.embedding.out_features == 64
    megnet = build_model(load_model_cfg("megnet"), 1)
    assert isinstance(megnet.encoder, MEGNetEncoder)
    assert len(megnet.encoder.blocks) == 3 and megnet.embed_dim == 96
    assert megnet.encoder.expansion.out_dim == 100
    assert megnet.encoder.atom_embedding.embedding_dim == 16
    assert megnet.head.hidden == (32, 16)
    mlp = build_model(load_model_cfg("descriptor_mlp"), 1)
    assert isinstance(mlp.encoder, DescriptorMLPEncoder) and mlp.encoder.in_dim == 146


def test_sizes_come_from_config() -> None:
    cfg = load_model_cfg("cgcnn")
    cfg.atom_fea_len, cfg.n_conv, cfg.h_fea_len, cfg.n_h = 16, 2, 24, 3
    model = build_model(cfg, 1)
    assert len(model.encoder.blocks) == 2 and model.embed_dim == 24
    assert model.head.hidden == (24, 24)
    assert model.encoder.embedding.out_features == 16
    plain = build_model({"name": "descriptor_mlp", "in_dim": 7, "hidden": [5]}, 2)
    assert plain.encoder.in_dim == 7 and plain.embed_dim == 5


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model({"name": "schnet"}, 1)
    cfg = load_model_cfg("megnet")
    cfg.n_blokcs = 2  # misspelt key
    with pytest.raises(TypeError, match="n_blokcs"):
        build_model(cfg, 1)
    with pytest.raises(ValueError, match="in_dim"):
        build_model({"name": "descriptor_mlp", "features": {"kind": "xenonpy"}}, 1)
    with pytest.raises(ValueError, match="cutoff"):
        build_model({"name": "descriptor_mlp", "in_dim": 3, "cutoff": 8.0}, 1)


def test_accepts_plain_dict() -> None:
    cfg = OmegaConf.to_container(load_model_cfg("cgcnn"))
    assert isinstance(build_model(cfg, 1), KappaModel)
