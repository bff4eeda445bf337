"""Behavioural tests shared by the graph models (CGCNN, MEGNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testkit import (
    batch_of,
    graph_of,
    load_model_cfg,
    overfit,
    permute_sites,
    random_targets,
)
from pymatgen.core import Structure
from torch_geometric.data import Batch

from kappaflow.models import KappaModel, build_model

GRAPH_MODELS = ["cgcnn", "megnet"]
N_TARGETS = 2


def make(name: str, seed: int = 0) -> tuple[KappaModel, float, int | None]:
    torch.manual_seed(seed)
    cfg = load_model_cfg(name)
    return build_model(cfg, N_TARGETS), float(cfg.cutoff), cfg.max_neighbors


@pytest.fixture(params=GRAPH_MODELS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_overfits_sixteen_structures(name: str, structures16: list[Structure]) -> None:
    model, cutoff, max_nb = make(name)
    batch = batch_of(structures16, cutoff, max_nb)
    targets = random_targets(len(structures16), N_TARGETS)
    initial, final = overfit(model, batch, targets, max_steps=300, lr=3e-3)
    assert final < 0.05 * initial, (initial, final)


def test_encode_head_split(name: str, structures16: list[Structure]) -> None:
    model, cutoff, max_nb = make(name)
    batch = batch_of(structures16[:5], cutoff, max_nb)
    model.eval()
    with torch.no_grad():
        emb = model.encode(batch)
        assert emb.shape == (5, model.embed_dim)
        assert torch.isfinite(emb).all()
        out = model(batch)
        assert out.shape == (5, N_TARGETS)
        torch.testing.assert_close(model.head(emb), out)


def test_single_graph_and_batch_independence(name: str, structures16: list[Structure]) -> None:
    """In eval mode a crystal's prediction does not depend on the rest of the batch."""
    model, cutoff, max_nb = make(name)
    model.eval()
    graphs = [graph_of(s, cutoff, max_nb) for s in structures16[6:10]]
    with torch.no_grad():
        together = model(Batch.from_data_list(graphs))
        alone = torch.cat([model(Batch.from_data_list([g])) for g in graphs])
        unbatched = model(graphs[2])  # a plain Data without a `batch` vector
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unbatched, alone[2:3], atol=1e-5, rtol=1e-5)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def _train_steps(model: KappaModel, batch: Batch, steps: int = 3) -> None:
    targets = random_targets(batch.num_graphs, N_TARGETS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.mean((model(batch) - targets) ** 2).backward()
        opt.step()


def test_freeze_encoder_keeps_encoder_fixed(name: str, structures16: list[Structure]) -> None:
    model, cutoff, max_nb = make(name)
    batch = batch_of(structures16[:8], cutoff, max_nb)
    model.freeze_encoder()
    assert model.encoder_frozen
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.n_parameters(trainable_only=True) == sum(
        p.numel() for p in model.head.parameters()
    )
    enc_before, head_before = _snapshot(model.encoder), _snapshot(model.head)
    _train_steps(model, batch)
    # Parameters *and* buffers (batch-norm running statistics) of the encoder are unchanged.
    assert _changed(enc_before, model.encoder) == set()
    assert _changed(head_before, model.head) == set(head_before)
    assert not model.encoder.training and model.head.training

    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.parameters())
    assert model.encoder.training


def test_unfreeze_last_k(name: str, structures16: list[Structure]) -> None:
    model, cutoff, max_nb = make(name)
    batch = batch_of(structures16[:8], cutoff, max_nb)
    n_blocks = len(model.encoder.blocks)
    model.freeze_encoder(unfreeze_last_k=1)
    last = model.encoder.blocks[-1]
    assert all(p.requires_grad for p in last.parameters())
    assert all(p.requires_grad for p in model.encoder.readout.parameters())
    for block in model.encoder.blocks[: n_blocks - 1]:
        assert not any(p.requires_grad for p in block.parameters())
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert all(n.startswith((f"blocks.{n_blocks - 1}.", "readout.")) for n in trainable)

    before = _snapshot(model.encoder)
    _train_steps(model, batch)
    changed = _changed(before, model.encoder)
    assert changed, "the unfrozen block and readout must train"
    assert all(k.startswith((f"blocks.{n_blocks - 1}.", "readout.")) for k in changed)
    assert last.training and not model.encoder.blocks[0].training

    with pytest.raises(ValueError):
        model.freeze_encoder(unfreeze_last_k=n_blocks + 1)


def test_state_dict_round_trip(name: str, structures16: list[Structure], tmp_path) -> None:
    model, cutoff, max_nb = make(name, seed=1)
    batch = batch_of(structures16[:6], cutoff, max_nb)
    _train_steps(model, batch, steps=2)  # move batch-norm statistics away from their defaults
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    clone, _, _ = make(name, seed=2)
    clone.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(batch), model(batch), atol=0, rtol=0)


def test_permutation_and_translation_invariance(name: str, structures16: list[Structure]) -> None:
    """Reordering atoms or shifting the origin leaves predictions unchanged (eval mode).

    The crystals are slightly distorted so that no two neighbour distances tie: with ties at
    the ``max_neighbors`` boundary, which images are kept depends on the site order (a
    property of k-nearest truncation, not of the models).
    """
    model, cutoff, max_nb = make(name)
    model.eval()
    rng = np.random.default_rng(5)
    for i in (0, 4, 8, 11):  # rocksalt, zincblende, two perovskites
        s = structures16[i]
        frac = s.frac_coords + rng.normal(scale=0.01, size=s.frac_coords.shape)
        s = Structure(s.lattice, s.species, frac)
        moved = Structure(s.lattice, s.species, s.frac_coords + np.array([0.13, 0.71, 0.37]))
        variants = [s, permute_sites(s, seed=3), moved]
        with torch.no_grad():
            out = [model(batch_of([v], cutoff, max_nb)) for v in variants]
        for other in out[1:]:
            torch.testing.assert_close(other, out[0], atol=1e-5, rtol=1e-5)


def test_replace_head_keeps_encoder(name: str, structures16: list[Structure]) -> None:
    model, cutoff, max_nb = make(name)
    batch = batch_of(structures16[:4], cutoff, max_nb)
    model.eval()
    with torch.no_grad():
        emb = model.encode(batch)
        head = model.replace_head(n_targets=1)
        assert model.head is head and model.n_targets == 1
        torch.testing.assert_close(model.encode(batch), emb)
        assert model(batch).shape == (4, 1)
