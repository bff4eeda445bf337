"""Transfer strategies on a tiny CGCNN "pretrained" export (in-code crystals, CPU, < 30 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from kappa_testkit import perturbed_export, split, tiny_graphs, trainer_cfg
from omegaconf import OmegaConf
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from kappaflow.layout import project_root
from kappaflow.models import MEGNetEncoder, build_model, encoder_class
from kappaflow.training.datamodule import GraphDataModule
from kappaflow.training.export import save_model
from kappaflow.training.module import KappaLightningModule
from kappaflow.training.target_transform import TargetTransform
from kappaflow.training.trainer import fit
from kappaflow.transfer import (
    STRATEGIES,
    EmbeddingRegressor,
    apply_stage,
    extract_embeddings,
    merge_trainer_cfg,
    prepare_model,
    pretrained_model_path,
    stage_plan,
    strategy_name,
    uses_sklearn_regressor,
)

CARD: dict[str, Any] = {
    "name": "cgcnn",
    "description": "tiny test card",
    "atom_fea_len": 8,
    "n_conv": 2,
    "h_fea_len": 8,
    "n_h": 1,
    "cutoff": 5.0,
    "max_neighbors": 8,
    "head_dropout": 0.0,
}
N = 16
CONF = project_root() / "conf" / "transfer"


def load_strategy(name: str):
    """A strategy node of conf/transfer/<name>.yaml (stored under ``strategies.<name>``)."""
    return OmegaConf.load(CONF / f"{name}.yaml").strategies[name]


def strategy(name: str, **over: Any) -> dict[str, Any]:
    return {"name": name, "pretrained": "cgcnn", "model": "cgcnn", **over}


def encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.head.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def train_steps(model: torch.nn.Module, graphs: list[Any], steps: int = 3) -> None:
    """A few Adam steps on the trainable parameters (targets: random, standardized space)."""
    batch = Batch.from_data_list(graphs)
    target = torch.randn(len(graphs), model.n_targets, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.mean((model(batch) - target) ** 2).backward()
        opt.step()


@pytest.fixture(scope="module")
def graphs() -> list[Any]:
    return tiny_graphs(N)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, graphs: list[Any]) -> Path:
    """A 2-target 'pretrained' export with non-trivial weights and batch-norm statistics."""
    path = pretrained_model_path(tmp_path_factory.mktemp("models"), "cgcnn")
    return perturbed_export(CARD, graphs, path, ["e_form", "band_gap"], meta={"dataset": "toy"})


@pytest.fixture(scope="module")
def pre_encoder(pretrained: Path) -> dict[str, torch.Tensor]:
    state = torch.load(pretrained, weights_only=True)["state_dict"]
    out = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    assert any("running_var" in k for k in out)  # batch-norm buffers are part of the check
    running_mean = out["blocks.0.bn.running_mean"]
    assert not torch.equal(running_mean, torch.zeros_like(running_mean))
    return out


# ---------------------------------------------------------------------------------- freeze
def test_freeze_lightning_fit_keeps_encoder_bit_identical(
    pretrained: Path, pre_encoder: dict[str, torch.Tensor], graphs: list[Any], tmp_path: Path
) -> None:
    model, over = prepare_model(strategy("freeze", unfreeze_last_k=0), CARD, pretrained, 1)
    assert over["optim"]["encoder_lr_mult"] == 0.0
    assert same(encoder_state(model), pre_encoder)
    cfg = merge_trainer_cfg(trainer_cfg(max_epochs=2), over)
    L.seed_everything(7, workers=True, verbose=False)
    tr, va, _ = split(N)
    dm = GraphDataModule(graphs, tr, va, batch_size=4, seed=7)
    transform = TargetTransform.fit(dm.train_targets(), ["log10"], ["kappa"])
    module = KappaLightningModule.from_cfg(model, transform, cfg)
    head0 = head_state(model)

    result = fit(cfg, module, dm, tmp_path / "run", test=False)

    assert result.epochs_run == 2
    assert same(encoder_state(module.model), pre_encoder)  # weights AND batch-norm buffers
    assert differing(head_state(module.model), head0) == set(head0)  # every head tensor moved


def test_freeze_unfreeze_last_block(
    pretrained: Path, pre_encoder: dict[str, torch.Tensor], graphs: list[Any]
) -> None:
    model, over = prepare_model(
        strategy("freeze", unfreeze_last_k=1, encoder_lr_mult=0.5), CARD, pretrained, 1
    )
    assert over["optim"]["encoder_lr_mult"] == 0.5
    train_steps(model, graphs)
    changed = differing(encoder_state(model), pre_encoder)
    assert not {k for k in changed if not k.startswith(("blocks.1.", "readout."))}
    assert {"blocks.1.bn.running_mean", "blocks.1.lin_f.weight", "readout.1.weight"} <= changed
    with pytest.raises(ValueError, match="encoder_lr_mult"):
        prepare_model(strategy("freeze", unfreeze_last_k=1, encoder_lr_mult=0), CARD, pretrained, 1)


# ---------------------------------------------------------------------------------- finetune
def test_finetune_copies_encoder_new_head_trains_everything(
    pretrained: Path, pre_encoder: dict[str, torch.Tensor], graphs: list[Any]
) -> None:
    pre_state = torch.load(pretrained, weights_only=True)["state_dict"]
    model, over = prepare_model(
        strategy("finetune", encoder_lr_mult=0.1, trainer={"max_epochs": 5}), CARD, pretrained, 1
    )
    assert over == {"max_epochs": 5, "optim": {"encoder_lr_mult": 0.1}}
    assert same(encoder_state(model), pre_encoder)
    assert model.n_targets == 1 and pre_state["head.mlp.lins.0.weight"].shape[0] == 2
    assert all(p.requires_grad for p in model.parameters()) and not model.encoder_frozen

    cfg = merge_trainer_cfg(trainer_cfg(), over)
    transform = TargetTransform(["log10"], ["kappa"])
    module = KappaLightningModule.from_cfg(model, transform, cfg)
    groups = {g["name"]: g["lr"] for g in module.param_groups()}
    assert groups == pytest.approx({"encoder": 3e-4, "head": 3e-3})

    train_steps(model, graphs)
    assert differing(encoder_state(model), pre_encoder) >= {
        "embedding.weight",
        "blocks.0.lin_f.weight",
    }


def test_scratch_is_not_pretrained(pretrained: Path, pre_encoder: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(123)
    model, over = prepare_model(strategy("scratch", pretrained=None), CARD, pretrained, 1)
    assert over == {}
    assert not model.encoder_frozen
    changed = differing(encoder_state(model), pre_encoder)
    assert {"embedding.weight", "blocks.0.lin_f.weight", "blocks.1.bn.running_mean"} <= changed


# ---------------------------------------------------------------------------------- features
def test_features_embeddings_and_regressors(pretrained: Path, graphs: list[Any]) -> None:
    cfg = load_strategy("features")
    cfg.model, cfg.pretrained = "cgcnn", "cgcnn"
    model, over = prepare_model(cfg, CARD, pretrained, 1)
    assert uses_sklearn_regressor(cfg) and over["optim"]["encoder_lr_mult"] == 0.0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    X = extract_embeddings(model, graphs, batch_size=5)
    assert model.training  # mode restored
    assert X.shape == (N, model.embed_dim) and X.dtype == np.float64 and np.isfinite(X).all()
    np.testing.assert_array_equal(X, extract_embeddings(model, graphs, batch_size=5))
    np.testing.assert_allclose(X, extract_embeddings(model, graphs, batch_size=N), rtol=1e-5)

    kappa = np.array([float(g.y[0, 0]) for g in graphs])  # W/m/K
    tr, _, te = split(N)
    for name in ("ridge", "random_forest"):
        cfg.regressor = name
        reg = EmbeddingRegressor.from_cfg(cfg, seed=0).fit(X[tr], kappa[tr])
        pred = reg.predict(X[te])
        assert pred.shape == (len(te),) and (pred > 0).all()
        # Fitted on log10 κ, predicted back in W/m/K: a constant κ comes back unchanged.
        const = EmbeddingRegressor.from_cfg(cfg).fit(X[tr], np.full(len(tr), 5.0))
        np.testing.assert_allclose(const.predict(X[te]), 5.0, rtol=1e-9)
    with pytest.raises(ValueError, match="κ > 0"):
        EmbeddingRegressor("ridge").fit(X[tr], -kappa[tr])

    cfg.regressor = "mlp_head"
    model, over = prepare_model(cfg, CARD, pretrained, 1)
    assert not uses_sklearn_regressor(cfg) and over["optim"]["encoder_lr_mult"] == 0.0
    assert model.encoder_frozen
    with pytest.raises(ValueError, match="mlp_head"):
        EmbeddingRegressor("mlp_head")


# ---------------------------------------------------------------------------------- two_stage
def test_two_stage_reads_stages_and_carries_encoder(
    pretrained: Path, pre_encoder: dict[str, torch.Tensor], graphs: list[Any]
) -> None:
    cfg = load_strategy("two_stage")
    cfg.model, cfg.pretrained = "cgcnn", "cgcnn"  # the chain on the tiny CGCNN export
    assert cfg.stages[-1].dataset is None  # the last stage trains on the set under evaluation
    assert stage_plan(cfg)[-1].dataset == ""
    plan = stage_plan(cfg, target_dataset="paraisite_d2")
    assert [s.dataset for s in plan] == ["aflow_agl", "paraisite_d2"]
    assert plan[1].trainer["optim"]["lr"] == cfg.stages[1].trainer.optim.lr  # stage wins
    assert plan[0].trainer["optim"]["lr"] == cfg.trainer.optim.lr  # inherited from strategy

    model, over0 = prepare_model(cfg, CARD, pretrained, 1)
    assert same(encoder_state(model), pre_encoder)
    assert over0["max_epochs"] == cfg.stages[0].trainer.max_epochs
    train_steps(model, graphs)  # "stage 0" (dataset A)
    enc1, head1 = encoder_state(model), head_state(model)
    assert differing(enc1, pre_encoder)

    model2, over1 = apply_stage(model, plan[1], 1)
    assert model2 is model
    assert same(encoder_state(model2), enc1)  # encoder carried into stage 1 (dataset B)
    assert same(head_state(model2), head1) == (not plan[1].reinit_head)
    assert over1["optim"]["encoder_lr_mult"] == plan[1].encoder_lr_mult
    assert over1["max_epochs"] == cfg.stages[1].trainer.max_epochs

    frozen, over = apply_stage(
        model, {"dataset": "b", "strategy": "freeze", "reinit_head": True}, 1
    )
    assert frozen.encoder_frozen and over["optim"]["encoder_lr_mult"] == 0.0
    assert same(encoder_state(frozen), enc1) and not same(head_state(frozen), head1)


def test_two_stage_is_paraisite_megnet_chain(graphs: list[Any], tmp_path: Path) -> None:
    """two_stage as ParAIsite: the MEGNet export's encoder -> stage A -> stage B, carried on."""
    cfg = load_strategy("two_stage")
    assert (cfg.model, cfg.pretrained) == ("megnet", "megnet")
    card = dict(OmegaConf.to_container(OmegaConf.load(CONF.parent / "models" / "megnet.yaml")))
    card |= {"n_gaussians": 10, "pre": [8, 4], "hidden": [8, 8], "n_blocks": 1}
    card |= {"set2set_hidden": 4, "set2set_steps": 1, "head_hidden": [4]}
    torch.manual_seed(0)
    pre = build_model(card, 2)  # MP formation energy + band gap
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.1 * torch.randn_like(p))
    transform = TargetTransform(["none", "none"], ["e_form", "band_gap"])
    path = save_model(pretrained_model_path(tmp_path, "megnet"), pre, transform, card)
    pre_state = encoder_state(pre)

    plan = stage_plan(cfg, target_dataset="paraisite_d1")
    model, over0 = prepare_model(cfg, card, path, 1)  # stage A: AFLOW AGL κ
    assert isinstance(model.encoder, MEGNetEncoder) and model.n_targets == 1
    assert same(encoder_state(model), pre_state)
    assert over0["optim"]["encoder_lr_mult"] == plan[0].encoder_lr_mult
    train_steps(model, graphs)
    enc_a, head_a = encoder_state(model), head_state(model)
    assert differing(enc_a, pre_state)

    model_b, over1 = apply_stage(model, plan[1], 1)  # stage B: the high-quality κ set
    assert same(encoder_state(model_b), enc_a) and same(head_state(model_b), head_a)
    assert over1["optim"]["encoder_lr_mult"] == plan[1].encoder_lr_mult
    with pytest.raises(ValueError, match="model card 'cgcnn'"):
        prepare_model(cfg, CARD, path, 1)  # two_stage is configured for MEGNet


def test_two_stage_cgcnn_is_the_same_chain() -> None:
    """The CGCNN variant differs from two_stage only in its encoder and pretraining run."""
    paper, variant = load_strategy("two_stage"), load_strategy("two_stage_cgcnn")
    assert strategy_name(variant) == "two_stage"
    assert (variant.model, variant.pretrained) == ("cgcnn", "cgcnn")
    encoder_keys = ("model", "pretrained")
    a, b = OmegaConf.to_container(paper), OmegaConf.to_container(variant)
    assert {k: v for k, v in a.items() if k not in encoder_keys} == {
        k: v for k, v in b.items() if k not in encoder_keys
    }


#: Files of conf/transfer that select several strategies rather than define one.
COLLECTIONS = ("all", "default", "paper", "sevennet")


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in COLLECTIONS)
)
def test_strategy_file_composes_its_pretrain_run(name: str) -> None:
    """Selecting a strategy composes the pretraining run it names, built from its model card."""
    from kappaflow.config import compose

    cfg = compose([f"transfer={name}"])
    defined = OmegaConf.load(CONF / f"{name}.yaml").strategies
    assert set(cfg.transfer.strategies) == set(defined)
    for key in defined:
        s_cfg = cfg.transfer.strategies[key]
        if s_cfg.pretrained is not None:
            assert cfg.pretrain.runs[s_cfg.pretrained].model == s_cfg.model
        elif s_cfg.name != "scratch":  # a transfer strategy without a run: bundled weights
            assert encoder_class(cfg.models[s_cfg.model]).ships_weights, key


def test_sevennet_strategies_use_the_bundled_potential(graphs: list[Any]) -> None:
    """No pretraining run: finetune / features use SevenNet-0's own weights; scratch refuses."""
    from kappaflow.graphs.atoms import crystal_to_atom_graph
    from kappaflow.structure.crystal import CrystalArrays

    card = OmegaConf.load(project_root() / "conf" / "models" / "sevennet.yaml")
    files = OmegaConf.create(
        {k: load_strategy(k) for k in ("sevennet_features", "sevennet_stack", "sevennet_finetune")}
    )
    assert {s.pretrained for s in files.values()} == {None}
    L.seed_everything(0)
    model, over = prepare_model(files.sevennet_finetune, card, None, 1)
    assert over["optim"]["encoder_lr_mult"] == pytest.approx(0.1)
    assert model.n_parameters(trainable_only=True) == model.n_parameters()
    frozen, _ = prepare_model(files.sevennet_features, card, None, 1)
    head = sum(p.numel() for p in frozen.head.parameters())
    assert frozen.n_parameters(trainable_only=True) == head  # the encoder is frozen
    torch.testing.assert_close(
        frozen.encoder.state_dict(), model.encoder.state_dict(), rtol=0, atol=0
    )
    cells = [
        Structure(Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]])
        for a, x, y in [(3.0, "Cs", "Cl"), (2.9, "Na", "F"), (3.3, "K", "Br"), (2.6, "Li", "H")]
    ]
    items = [
        crystal_to_atom_graph(CrystalArrays.from_structure(c), 5.0, [1.0], str(i))
        for i, c in enumerate(cells)
    ]
    emb = extract_embeddings(frozen, items, batch_size=3)
    assert emb.shape == (4, 640) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="ships its pretrained weights"):
        prepare_model(files.sevennet_finetune, card, Path("models/pretrain/cgcnn.pt"), 1)
    with pytest.raises(ValueError, match="scratch on 'sevennet'"):
        prepare_model({"name": "scratch", "model": "sevennet"}, card, None, 1)


# ---------------------------------------------------------------------------------- config + errors
@pytest.mark.parametrize("name", STRATEGIES)
def test_config_files(name: str) -> None:
    path = CONF / f"{name}.yaml"
    assert path.read_text().startswith("#")
    cfg = load_strategy(name)
    assert strategy_name(cfg) == name
    assert (project_root() / "conf" / "models" / f"{cfg.model}.yaml").is_file()
    assert (cfg.pretrained is None) == (name == "scratch")


def test_errors(pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"atom_fea_len.*|differing keys \['atom_fea_len'\]"):
        prepare_model(strategy("finetune"), {**CARD, "atom_fea_len": 16}, pretrained, 1)
    with pytest.raises(ValueError, match=r"\['cutoff', 'n_conv'\]"):
        prepare_model(strategy("freeze"), {**CARD, "n_conv": 3, "cutoff": 6.0}, pretrained, 1)
    model, _ = prepare_model(strategy("finetune"), {**CARD, "n_h": 2}, pretrained, 1)  # head only
    assert len(model.head.hidden) == 1
    missing = pretrained_model_path(tmp_path, "megnet")
    with pytest.raises(FileNotFoundError, match=r"dvc repro pretrain@megnet"):
        prepare_model(strategy("finetune", pretrained="megnet"), CARD, missing, 1)
    with pytest.raises(ValueError, match="needs a pretrained model"):
        prepare_model(strategy("freeze"), CARD, None, 1)
    with pytest.raises(ValueError, match="model card 'cgcnn'"):
        prepare_model(strategy("finetune", model="megnet"), CARD, pretrained, 1)
    with pytest.raises(ValueError, match="unknown transfer strategy"):
        prepare_model(strategy("distill"), CARD, pretrained, 1)
    with pytest.raises(ValueError, match="no `stages`"):
        stage_plan({"name": "two_stage", "stages": []})


def test_features_descriptor_mlp_keeps_input_scaler(tmp_path: Path) -> None:
    """Ju et al. route: descriptor MLP encoder with its pretraining input scaler (buffers)."""
    from kappaflow.models import composition_data

    card = {"name": "descriptor_mlp", "cutoff": None, "in_dim": 5, "hidden": [6, 4]}
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(12, 5))
    torch.manual_seed(0)
    pre = build_model(card, 1)
    pre.encoder.fit_input_scaler(X)
    path = save_model(tmp_path / "sps.pt", pre, TargetTransform(["log10"], ["sps"]), card)
    cfg = strategy("features", model="descriptor_mlp", pretrained="sps", regressor="ridge")
    model, _ = prepare_model(cfg, card, path, 1)
    assert torch.equal(model.encoder.input_mean, pre.encoder.input_mean)
    assert not torch.equal(model.encoder.input_mean, torch.zeros(5))
    items = [composition_data(x, [1.0], f"c{i}") for i, x in enumerate(X)]
    emb = extract_embeddings(model, items, batch_size=5)
    assert emb.shape == (12, 4)
    with torch.no_grad():
        ref = pre.eval().encoder(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)


def test_embedding_regressor_clips_wild_extrapolation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    kappa = 10 ** (1.0 + 0.5 * X[:, 0])  # log10 κ linear in the first embedding dimension
    far = np.array([[100.0, 0.0, 0.0], [-100.0, 0.0, 0.0]])  # 100 sigma out of distribution
    lo, hi = np.log10(kappa).min(), np.log10(kappa).max()
    clipped = EmbeddingRegressor("ridge", clip_margin=1.0).fit(X, kappa).predict(far)
    np.testing.assert_allclose(np.log10(clipped), [hi + 1.0, lo - 1.0], rtol=1e-9)
    free = EmbeddingRegressor("ridge", clip_margin=None).fit(X, kappa).predict(far)
    assert np.log10(free[0]) > hi + 10  # what the guard prevents
    inside = EmbeddingRegressor("ridge", clip_margin=1.0).fit(X, kappa)
    np.testing.assert_allclose(inside.predict(X), 10 ** (1.0 + 0.5 * X[:, 0]), rtol=1e-3)
