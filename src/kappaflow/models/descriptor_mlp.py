"""Descriptor MLP: composition descriptors (Magpie) -> MLP, with the same encoder/head split.

This is the feature-based route of Ju et al., "Exploring diamondlike lattice thermal
conductivity crystals via feature-based transfer learning", Phys. Rev. Mater. 5, 053801
(2021): an MLP pretrained on a proxy property (e.g. scattering phase space) whose hidden
representation is reused for κ. Inputs here are Magpie descriptors
(:mod:`kappaflow.features.composition`) rather than the paper's XenonPy descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data

from kappaflow.models.base import Encoder, KappaModel
from kappaflow.models.heads import MLPHead, make_activation


@dataclass
class CompositionBatch:
    """Minimal batch for :class:`DescriptorMLPEncoder` when no PyG loader is used.

    Attributes:
        comp: ``[B, F]`` composition features.
        y: optional ``[B, T]`` raw targets.
    """

    comp: torch.Tensor
    y: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> CompositionBatch:
        """Move tensors to ``device``."""
        return CompositionBatch(self.comp.to(device), None if self.y is None else self.y.to(device))


def composition_data(
    comp: np.ndarray | torch.Tensor,
    y: Sequence[float] | np.ndarray | None = None,
    material_id: str = "",
) -> Data:
    """One sample as a PyG ``Data`` (``comp [1, F]``, ``y [1, T]``) for PyG ``DataLoader``.

    Collating such samples gives a ``Batch`` with ``comp [B, F]`` and ``y [B, T]``, so the
    descriptor model can share the graph models' data loaders and training loop.

    Args:
        comp: ``[F]`` feature vector of one material.
        y: raw target values (NaN where missing), length T; None gives ``y`` of shape [1, 0].
        material_id: identifier stored as ``material_id``.

    Returns:
        The ``Data`` object.
    """
    x = torch.as_tensor(np.asarray(comp, dtype=np.float32)).reshape(1, -1)
    targets = np.asarray([] if y is None else y, dtype=np.float32).reshape(1, -1)
    return Data(comp=x, y=torch.from_numpy(targets), material_id=material_id)


class DescriptorMLPEncoder(Encoder):
    """MLP encoder on fixed-length descriptors: ``[B, in_dim]`` -> ``[B, hidden[-1]]``.

    Inputs are standardised with stored buffers ``input_mean``/``input_std`` (set them from
    the *training split* with :meth:`fit_input_scaler`; they are saved in the state dict).
    After standardisation NaN inputs are replaced by 0, i.e. imputed with the train mean.
    Each block is ``Linear -> activation -> Dropout``; the embedding is the last block's output.

    Designed for composition-only data (Magpie features, Ward et al. 2016); no published error
    for this exact configuration -- it is kappaflow's baseline for Ju et al. (2021)-style
    feature-based transfer.

    Args:
        in_dim: number of input descriptors F.
        hidden: widths of the hidden layers (``blocks``); ``embed_dim = hidden[-1]``.
        activation: activation name (see :data:`kappaflow.models.heads.ACTIVATIONS`).
        dropout: dropout probability after each activation.
    """

    #: Reads a descriptor vector (``Data.comp``), no graph: the card's ``cutoff`` is null.
    input_kind = "composition"

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (128, 64, 32),
        activation: str = "silu",
        dropout: float = 0.1,
    ):
        super().__init__()
        if not hidden:
            raise ValueError("DescriptorMLPEncoder needs at least one hidden layer")
        self.in_dim = int(in_dim)
        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_std", torch.ones(self.in_dim))
        widths = [self.in_dim, *(int(h) for h in hidden)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), make_activation(activation), nn.Dropout(dropout))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.readout = nn.Identity()
        self.embed_dim = widths[-1]

    @torch.no_grad()
    def fit_input_scaler(self, features: np.ndarray | torch.Tensor, min_std: float = 1e-8) -> None:
        """Set ``input_mean``/``input_std`` from training features (NaN ignored).

        Args:
            features: ``[N, in_dim]`` training-split descriptors.
            min_std: standard deviations below this (constant columns) are set to 1.
        """
        x = torch.as_tensor(np.asarray(features, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected [N, {self.in_dim}] features, got {tuple(x.shape)}")
        mean = torch.nanmean(x, dim=0)
        var = torch.nanmean((x - mean) ** 2, dim=0)
        std = var.sqrt()
        mean = torch.nan_to_num(mean, nan=0.0)
        std = torch.where(torch.isfinite(std) & (std > min_std), std, torch.ones_like(std))
        self.input_mean.copy_(mean.to(self.input_mean.dtype))
        self.input_std.copy_(std.to(self.input_std.dtype))

    def forward(self, batch: Any) -> torch.Tensor:
        """Embed a batch with ``comp [B, in_dim]`` (PyG ``Batch``/``CompositionBatch``) or a tensor.

        Returns:
            ``[B, embed_dim]`` embeddings.
        """
        comp = batch if isinstance(batch, torch.Tensor) else batch.comp
        x = torch.nan_to_num((comp - self.input_mean) / self.input_std, nan=0.0)
        for block in self.blocks:
            x = block(x)
        return x


def build_descriptor_mlp(
    n_targets: int,
    in_dim: int,
    hidden: Sequence[int] = (128, 64, 32),
    activation: str = "silu",
    dropout: float = 0.1,
    head_hidden: Sequence[int] = (16,),
    head_dropout: float = 0.0,
) -> KappaModel:
    """Build a descriptor-MLP :class:`~kappaflow.models.base.KappaModel`.

    Call ``model.encoder.fit_input_scaler(X_train)`` before training.

    Args:
        n_targets: number of regression targets.
        in_dim: number of input descriptors.
        hidden: encoder hidden widths (embedding = last).
        activation: activation name (encoder and head).
        dropout: encoder dropout.
        head_hidden: head hidden widths.
        head_dropout: head dropout.

    Returns:
        The model.
    """
    encoder = DescriptorMLPEncoder(in_dim, hidden, activation, dropout)
    head = MLPHead(encoder.embed_dim, n_targets, head_hidden, activation, head_dropout)
    return KappaModel(encoder, head, name="descriptor_mlp")
