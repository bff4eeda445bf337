"""Prediction heads and activation helpers shared by all models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.nn import MLP
from torch_geometric.nn.models.schnet import ShiftedSoftplus

#: Activations selectable by name in model configs. ``shifted_softplus`` is
#: ``softplus(x) - log 2`` (MEGNet's ``softplus2``, zero at x = 0).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "shifted_softplus": ShiftedSoftplus,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation module from its config name.

    Args:
        name: one of :data:`ACTIVATIONS` (case-insensitive).

    Returns:
        A fresh activation module.

    Raises:
        ValueError: unknown name.
    """
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}"
        ) from None


def make_mlp(
    channels: Sequence[int], activation: str, dropout: float = 0.0, plain_last: bool = True
) -> MLP:
    """Build a plain multilayer perceptron (``torch_geometric.nn.MLP``, no normalisation).

    Args:
        channels: layer widths ``[in, hidden..., out]`` (at least two entries).
        activation: activation name (see :data:`ACTIVATIONS`) used after every hidden layer
            (and after the last one when ``plain_last`` is False).
        dropout: dropout probability after each hidden activation.
        plain_last: no activation/dropout after the last layer.

    Returns:
        The MLP module.
    """
    if len(channels) < 2:
        raise ValueError(f"an MLP needs at least [in, out] channels, got {list(channels)}")
    return MLP(
        [int(c) for c in channels],
        act=make_activation(activation),
        norm=None,
        dropout=float(dropout),
        plain_last=plain_last,
    )


class MLPHead(nn.Module):
    """Regression head: per-graph embedding ``[B, in_dim]`` -> predictions ``[B, n_targets]``.

    Predictions are in the *standardized, transformed* target space (e.g. standardized
    log10 κ, κ in W/m/K); the trainer owns the transforms.

    Args:
        in_dim: embedding width (the encoder's ``embed_dim``).
        n_targets: number of regression targets.
        hidden: hidden layer widths; empty gives a single linear layer.
        activation: activation name after each hidden layer.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(
        self,
        in_dim: int,
        n_targets: int,
        hidden: Sequence[int] = (),
        activation: str = "softplus",
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_targets < 1:
            raise ValueError(f"n_targets must be >= 1, got {n_targets}")
        self.in_dim = int(in_dim)
        self.n_targets = int(n_targets)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.dropout = float(dropout)
        self.mlp = make_mlp([self.in_dim, *self.hidden, self.n_targets], activation, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map embeddings ``[B, in_dim]`` to predictions ``[B, n_targets]``."""
        return self.mlp(x)
