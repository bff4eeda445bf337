"""Tests of the descriptor MLP (Magpie composition features -> MLP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testkit import load_model_cfg, overfit, random_targets
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from kappaflow.features.composition import magpie_features
from kappaflow.models import (
    CompositionBatch,
    DescriptorMLPEncoder,
    KappaModel,
    build_model,
    composition_data,
)

FORMULAS = [
    "NaCl", "MgO", "PbTe", "LiF", "GaAs", "ZnS", "InSb", "BAs",
    "SrTiO3", "BaTiO3", "KNbO3", "CsPbI3", "Fe", "W", "Na", "Nb",
]  # fmt: skip
N_TARGETS = 2


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    cfg = load_model_cfg("descriptor_mlp")
    return magpie_features(FORMULAS, extras=cfg.features.extras)


def make(features: np.ndarray, seed: int = 0, **overrides: object) -> KappaModel:
    torch.manual_seed(seed)
    cfg = load_model_cfg("descriptor_mlp")
    for key, value in overrides.items():
        cfg[key] = value
    model = build_model(cfg, N_TARGETS)
    model.encoder.fit_input_scaler(features)
    return model


def test_in_dim_matches_features(features: np.ndarray) -> None:
    model = make(features)
    assert model.encoder.in_dim == features.shape[1] == 146


def test_overfits_sixteen_compositions(features: np.ndarray) -> None:
    model = make(features, dropout=0.0)
    batch = CompositionBatch(torch.from_numpy(features))
    targets = random_targets(len(FORMULAS), N_TARGETS)
    initial, final = overfit(model, batch, targets, max_steps=400, lr=3e-3)
    assert final < 0.05 * initial, (initial, final)


def test_input_scaler(features: np.ndarray) -> None:
    enc = DescriptorMLPEncoder(features.shape[1], hidden=[8])
    x = features.astype(np.float64).copy()
    x[3, 0] = np.nan  # ignored by the fit
    enc.fit_input_scaler(x)
    col0 = np.delete(x[:, 0], 3)
    assert enc.input_mean[0].item() == pytest.approx(col0.mean(), rel=1e-6)
    assert enc.input_std[0].item() == pytest.approx(col0.std(), rel=1e-6)
    constant = np.flatnonzero(np.ptp(features, axis=0) == 0)
    assert len(constant) > 0  # e.g. the f-shell statistics of these f-free compounds
    assert torch.all(enc.input_std[constant] == 1.0)
    with pytest.raises(ValueError):
        enc.fit_input_scaler(features[:, :10])


def test_nan_inputs_are_imputed_with_train_mean(features: np.ndarray) -> None:
    model = make(features)
    model.eval()
    x = torch.from_numpy(features[:2]).clone()
    x_nan = x.clone()
    x_nan[0, 5] = float("nan")
    x_mean = x.clone()
    x_mean[0, 5] = model.encoder.input_mean[5]
    with torch.no_grad():
        torch.testing.assert_close(model(x_nan), model(x_mean))


def test_batch_kinds_agree(features: np.ndarray) -> None:
    """Tensor, CompositionBatch and a PyG batch of composition_data give the same output."""
    model = make(features)
    model.eval()
    x = torch.from_numpy(features)
    data = [composition_data(row, y=[1.0, np.nan], material_id=f"m{i}") for i, row in enumerate(x)]
    pyg = next(iter(DataLoader(data, batch_size=len(data))))
    assert pyg.comp.shape == x.shape and pyg.y.shape == (len(data), N_TARGETS)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(model(CompositionBatch(x)), ref)
        torch.testing.assert_close(model(pyg), ref)
        torch.testing.assert_close(model(Batch.from_data_list(data[:3])), ref[:3])


def test_encode_head_split(features: np.ndarray) -> None:
    model = make(features)
    model.eval()
    x = torch.from_numpy(features)
    with torch.no_grad():
        emb = model.encode(x)
        assert emb.shape == (len(FORMULAS), model.embed_dim)
        torch.testing.assert_close(model.head(emb), model(x))


def test_freeze_and_unfreeze_last_k(features: np.ndarray) -> None:
    model = make(features)
    x = torch.from_numpy(features)
    targets = random_targets(len(FORMULAS), N_TARGETS)

    def train_steps() -> None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(3):
            opt.zero_grad()
            torch.mean((model(x) - targets) ** 2).backward()
            opt.step()

    model.freeze_encoder()
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    train_steps()
    assert all(torch.equal(enc[k], v) for k, v in model.encoder.state_dict().items())
    assert all(not torch.equal(head[k], v) for k, v in model.head.state_dict().items())
    assert not model.encoder.training  # frozen dropout stays off

    model.freeze_encoder(unfreeze_last_k=1)
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train_steps()
    changed = {k for k, v in model.encoder.state_dict().items() if not torch.equal(enc[k], v)}
    last = len(model.encoder.blocks) - 1
    assert changed == {f"blocks.{last}.0.weight", f"blocks.{last}.0.bias"}


def test_state_dict_round_trip_includes_scaler(features: np.ndarray, tmp_path) -> None:
    model = make(features, seed=1)
    path = tmp_path / "descriptor.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(2)
    clone = build_model(load_model_cfg("descriptor_mlp"), N_TARGETS)  # default (unfit) scaler
    clone.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(clone.encoder.input_mean, model.encoder.input_mean)
    model.eval()
    clone.eval()
    x = torch.from_numpy(features)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), atol=0, rtol=0)


def test_row_order_invariance(features: np.ndarray) -> None:
    """Predictions are per-row: permuting the batch permutes the outputs."""
    model = make(features)
    model.eval()
    x = torch.from_numpy(features)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x[order]), model(x)[order])
