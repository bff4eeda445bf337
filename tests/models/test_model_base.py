"""Tests of the shared encoder/head interface and the heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kappaflow.models.base import Encoder, KappaModel
from kappaflow.models.heads import ACTIVATIONS, MLPHead, make_activation


class ToyEncoder(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.readout = nn.Linear(4, 5)
        self.embed_dim = 5

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.stem(batch)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.readout(x)


def toy(n_targets: int = 2) -> KappaModel:
    torch.manual_seed(0)
    return KappaModel(ToyEncoder(), MLPHead(5, n_targets, hidden=[6], activation="relu"))


def test_head_shapes_and_layers() -> None:
    head = MLPHead(8, 3, hidden=[16, 4], activation="softplus", dropout=0.1)
    assert head(torch.randn(7, 8)).shape == (7, 3)
    weights = [tuple(p.shape) for n, p in head.named_parameters() if n.endswith("weight")]
    assert weights == [(16, 8), (4, 16), (3, 4)]
    assert len([n for n, _ in MLPHead(8, 1).named_parameters() if n.endswith("weight")]) == 1
    with pytest.raises(ValueError):
        MLPHead(8, 0)


def test_shifted_softplus_is_zero_at_zero() -> None:
    assert make_activation("shifted_softplus")(torch.zeros(1)).item() == pytest.approx(0.0)
    assert set(ACTIVATIONS) >= {"softplus", "relu", "silu"}
    with pytest.raises(ValueError):
        make_activation("nope")


def test_mismatched_head_rejected() -> None:
    with pytest.raises(ValueError):
        KappaModel(ToyEncoder(), MLPHead(4, 1))


def test_freeze_flags_and_range() -> None:
    model = toy()
    model.freeze_encoder(unfreeze_last_k=2)
    flags = {n: p.requires_grad for n, p in model.encoder.named_parameters()}
    assert flags == {
        "stem.weight": False,
        "stem.bias": False,
        "blocks.0.weight": True,
        "blocks.0.bias": True,
        "blocks.1.weight": True,
        "blocks.1.bias": True,
        "readout.weight": True,
        "readout.bias": True,
    }
    model.freeze_encoder(unfreeze_last_k=0)
    assert model.n_parameters(trainable_only=True) == sum(
        p.numel() for p in model.head.parameters()
    )
    with pytest.raises(ValueError):
        model.freeze_encoder(unfreeze_last_k=-1)
    assert "encoder_frozen=yes" in repr(model)


def test_replace_head_keeps_settings_and_freeze_state() -> None:
    model = toy()
    model.freeze_encoder()
    head = model.replace_head(4)
    assert head.hidden == (6,) and head.activation == "relu" and head.n_targets == 4
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model(torch.randn(2, 3)).shape == (2, 4)
    head = model.replace_head(1, hidden=[], dropout=0.2)
    assert head.hidden == () and head.dropout == 0.2
