"""SevenNet-0 as a κ encoder: bundled weights, per-layer pooled scalars, fine-tuning, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testkit import load_model_cfg, overfit, permute_sites, random_targets, sixteen_structures
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from kappaflow.graphs.atoms import crystal_to_atom_graph
from kappaflow.models import KappaModel, build_model, input_kind
from kappaflow.models.sevennet import SevenNetEncoder, _network
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.training.export import load_model, save_model
from kappaflow.training.target_transform import TargetTransform

N_TARGETS = 1


def atom_batch(structures: list[Structure], cutoff: float = 5.0) -> Batch:
    graphs = [
        crystal_to_atom_graph(CrystalArrays.from_structure(s), cutoff, [1.0], f"s{i}")
        for i, s in enumerate(structures)
    ]
    return Batch.from_data_list(graphs)


def make(seed: int = 0) -> KappaModel:
    torch.manual_seed(seed)
    return build_model(load_model_cfg("sevennet"), N_TARGETS)


def test_card_reads_atom_graphs_and_pools_every_layer() -> None:
    model = make()
    assert input_kind(load_model_cfg("sevennet")) == "atoms"
    assert isinstance(model.encoder, SevenNetEncoder)
    assert model.encoder.ships_weights
    assert len(model.encoder.blocks) == 5
    assert model.embed_dim == 5 * 128  # 128 scalar channels after each interaction layer
    assert len(model.encoder.elements) == 89  # the potential's training elements
    assert SevenNetEncoder.weight_files(load_model_cfg("sevennet"))[0].is_file()


def test_encoder_weights_are_the_bundled_potential() -> None:
    """Nothing re-initialised: every kept tensor equals the potential's checkpoint tensor."""
    net = _network("sevennet-0")
    names = list(net._modules)
    first = next(i for i, n in enumerate(names) if n[0].isdigit())
    where = {n: f"stem.{j}" for j, n in enumerate(names[:first])}
    for n in names[first:]:
        if n[0].isdigit():
            layer = n.split("_", 1)[0]
            j = sum(m.startswith(f"{layer}_") for m in where)
            where[n] = f"blocks.{layer}.{j}"
    enc = make(seed=1).encoder.state_dict()
    checked = 0
    for key, value in net.state_dict().items():
        module, rest = key.split(".", 1)
        if module in where:  # the energy readout is dropped
            torch.testing.assert_close(enc[f"{where[module]}.{rest}"], value, rtol=0, atol=0)
            checked += 1
    assert checked > 40


def test_embedding_is_permutation_invariant_and_batch_independent() -> None:
    model = make().eval()
    structures = sixteen_structures()[:6]
    with torch.no_grad():
        together = model.encode(atom_batch(structures))
        alone = torch.cat([model.encode(atom_batch([s])) for s in structures])
        permuted = model.encode(atom_batch([permute_sites(s, 3) for s in structures]))
    assert together.shape == (6, model.embed_dim)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together, permuted, atol=1e-4, rtol=1e-4)
    # different crystals, different embeddings (NaCl vs MgO)
    assert not torch.allclose(together[0], together[1])


def test_fine_tuning_overfits_sixteen_structures() -> None:
    model = make()
    batch = atom_batch(sixteen_structures())
    targets = random_targets(16, N_TARGETS)
    initial, final = overfit(model, batch, targets, max_steps=200, lr=3e-3)
    assert final < 0.05 * initial, (initial, final)


def test_unknown_element_is_refused_with_its_number() -> None:
    """Elements outside the potential's 89 (e.g. Po, Z = 84) are named, not silently mapped."""
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"Z=\[84\]"):
        make().encode(atom_batch([po]))


def test_cutoff_other_than_the_potentials_is_refused() -> None:
    card = load_model_cfg("sevennet")
    card.cutoff = 6.0
    with pytest.raises(ValueError, match="5.0 Å cutoff"):
        build_model(card, 1)


def test_export_round_trip_predicts_the_same(tmp_path) -> None:
    model = make().eval()
    with torch.no_grad():  # move the head away from its initial state
        for p in model.head.parameters():
            p.add_(0.1)
    batch = atom_batch(sixteen_structures()[:4])
    path = tmp_path / "fold.pt"
    save_model(path, model, TargetTransform(["log10"], ["kappa"]), load_model_cfg("sevennet"), {})
    loaded, _, info = load_model(path)
    loaded.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(batch).numpy(), loaded(batch).numpy(), atol=1e-5)
    assert info["model_cfg"]["potential"] == "sevennet-0"


def test_atom_types_name_every_element_outside_the_potential() -> None:
    encoder = make().encoder
    assert encoder.atom_types(torch.tensor([11, 17])).tolist() == [
        int(encoder.z_to_type[11]),
        int(encoder.z_to_type[17]),
    ]
    with pytest.raises(ValueError, match=r"Z=\[84, 150\]"):
        encoder.atom_types(torch.tensor([11, 84, 150]))


def test_registry_ensemble_turns_an_unknown_element_into_that_rows_error() -> None:
    """A SevenNet champion: a Po crystal is one error row, the NaCl beside it is predicted."""
    from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
    from kappaflow.registry.predictor import Item, predict_items

    card = dict(load_model_cfg("sevennet"))
    members = [make(seed).eval() for seed in (0, 1)]
    tfs = [TargetTransform(["log10"], ["kappa"]) for _ in members]
    ensemble = KappaEnsemble(members, tfs, card, GraphSettings(8.0, 12), device="cpu")
    nacl, po = sixteen_structures()[0], Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    items = [
        Item("nacl", CrystalArrays.from_structure(nacl), "NaCl"),
        Item("po", CrystalArrays.from_structure(po), "Po"),
    ]
    out = predict_items(ensemble, None, items).set_index("id")
    assert np.isfinite(out.loc["nacl", "kappa"]) and not out.loc["nacl", "error"]
    assert "featurize_failed" in out.loc["po", "error"] and "Z=[84]" in out.loc["po", "error"]
