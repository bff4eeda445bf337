"""Radial basis expansion of interatomic distances."""

from __future__ import annotations

import torch
from torch import nn


class GaussianExpansion(nn.Module):
    """Expand distances (Å) on a grid of Gaussians, as in CGCNN (Xie & Grossman 2018).

    ``out[e, k] = exp(-(d_e - mu_k)^2 / width^2)`` with ``mu_k = start + k * step``.

    Args:
        start: first centre, Å.
        stop: last centre, Å (inclusive).
        step: spacing between centres, Å (CGCNN: 0.2).
        width: Gaussian width, Å; defaults to ``step``.
    """

    def __init__(
        self, start: float = 0.0, stop: float = 8.0, step: float = 0.2, width: float | None = None
    ):
        super().__init__()
        if stop <= start or step <= 0:
            raise ValueError(f"need start < stop and step > 0, got {start=}, {stop=}, {step=}")
        n = int(round((stop - start) / step)) + 1
        self.register_buffer("centers", torch.linspace(start, start + (n - 1) * step, n))
        self.width = float(width if width is not None else step)

    @property
    def out_dim(self) -> int:
        """Number of Gaussians."""
        return int(self.centers.numel())

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """Map distances ``[E]`` (Å) to ``[E, out_dim]``."""
        diff = dist.unsqueeze(-1) - self.centers
        return torch.exp(-(diff**2) / self.width**2)
