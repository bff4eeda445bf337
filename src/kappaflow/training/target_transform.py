"""Target transforms: per-target ``log10`` (κ in W/m/K) or identity, then standardization.

Models learn ``z = (t(y) - mean) / std`` where ``t`` is ``log10`` for κ (so ``t(y)`` is log10 κ,
κ in W/m/K) and the identity otherwise. ``mean``/``std`` are fitted on the training split only,
per target, ignoring NaNs (multi-target sets where not every row has every label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

TRANSFORMS = ("none", "log10")


class TargetTransform(nn.Module):
    """Per-target ``log10``/identity transform followed by standardization.

    ``mean`` and ``std`` are buffers (saved in the model's ``state_dict`` and moved with it);
    :meth:`to_dict` / :meth:`from_dict` give a plain, ``weights_only``-safe representation.

    Args:
        transforms: one of ``"none"`` / ``"log10"`` per target.
        names: target names (e.g. ``["kappa"]`` or ``["e_form", "band_gap"]``).
        mean: per-target mean of the transformed training targets (log10 W/m/K for κ).
        std: per-target standard deviation of the transformed training targets (> 0).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        transforms: Sequence[str],
        names: Sequence[str] | None = None,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.transforms = [str(t) for t in transforms]
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"unknown target transform(s) {bad}; expected one of {TRANSFORMS}")
        n = len(self.transforms)
        if n == 0:
            raise ValueError("need at least one target")
        self.names = [str(x) for x in names] if names is not None else [f"y{i}" for i in range(n)]
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} targets")
        mean_t = torch.zeros(n) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.ones(n) if std is None else torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != (n,) or std_t.shape != (n,):
            raise ValueError(f"mean/std must have shape ({n},)")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())
        self.register_buffer(
            "_log10_mask", torch.tensor([t == "log10" for t in self.transforms]), persistent=False
        )

    @property
    def n_targets(self) -> int:
        """Number of targets ``T``."""
        return len(self.transforms)

    @classmethod
    def fit(
        cls,
        y_train: Tensor,
        transforms: Sequence[str],
        names: Sequence[str] | None = None,
    ) -> TargetTransform:
        """Fit mean/std on the *training* targets, NaN-aware, per target.

        Args:
            y_train: [N, T] raw training targets (κ in W/m/K; NaN where missing).
            transforms: ``"none"``/``"log10"`` per target.
            names: target names.

        Returns:
            The fitted transform. A target with < 2 finite values or zero spread gets ``std = 1``;
            one with no finite value gets ``mean = 0``.

        Raises:
            ValueError: if a ``log10`` target has a finite value ``<= 0``.
        """
        y = torch.as_tensor(y_train, dtype=torch.float64)
        if y.ndim == 1:
            y = y.unsqueeze(1)
        unfitted = cls(transforms, names)
        if y.shape[1] != unfitted.n_targets:
            raise ValueError(f"y_train has {y.shape[1]} columns for {unfitted.n_targets} targets")
        log_cols = unfitted._log10_mask
        finite = torch.isfinite(y)
        if bool(((y <= 0) & finite & log_cols).any()):
            raise ValueError("log10 targets must be > 0 (κ in W/m/K)")
        t = unfitted._apply_log(y)
        means, stds = [], []
        for j in range(t.shape[1]):
            col = t[:, j][torch.isfinite(t[:, j])]
            mu = float(col.mean()) if col.numel() else 0.0
            sd = float(col.std(unbiased=False)) if col.numel() >= 2 else 1.0
            means.append(mu)
            stds.append(sd if sd > 1e-12 else 1.0)
        return cls(transforms, names, means, stds)

    def _apply_log(self, y: Tensor) -> Tensor:
        mask = self._log10_mask.to(y.device)
        return torch.where(mask, torch.log10(torch.where(mask, y, torch.ones_like(y))), y)

    def _apply_exp(self, t: Tensor) -> Tensor:
        mask = self._log10_mask.to(t.device)
        return torch.where(mask, torch.pow(10.0, t), t)

    def transform(self, y: Tensor) -> Tensor:
        """Raw targets ``[B, T]`` → transformed, not standardized (log10 κ for κ)."""
        return self._apply_log(y)

    def standardize(self, t: Tensor) -> Tensor:
        """Map transformed ``[B, T]`` to standardized values."""
        return (t - self.mean.to(t.dtype)) / self.std.to(t.dtype)

    def unstandardize(self, z: Tensor) -> Tensor:
        """Standardized ``[B, T]`` → transformed scale (log10 κ for κ)."""
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def forward(self, y: Tensor) -> Tensor:
        """Raw targets ``[B, T]`` (κ in W/m/K, NaN kept) → standardized transformed targets."""
        return self.standardize(self.transform(y))

    def inverse(self, z: Tensor) -> Tensor:
        """Standardized model outputs ``[B, T]`` → raw units (κ in W/m/K)."""
        return self._apply_exp(self.unstandardize(z))

    def to_dict(self) -> dict[str, Any]:
        """Plain (``weights_only``-safe) representation: names, transforms, mean, std lists."""
        return {
            "names": list(self.names),
            "transforms": list(self.transforms),
            "mean": [float(v) for v in self.mean.cpu()],
            "std": [float(v) for v in self.std.cpu()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetTransform:
        """Inverse of :meth:`to_dict`."""
        return cls(d["transforms"], d.get("names"), d["mean"], d["std"])

    def extra_repr(self) -> str:
        """Show names, transforms and statistics in ``repr``."""
        items = ", ".join(
            f"{n}:{t}(μ={m:.4g}, σ={s:.4g})"
            for n, t, m, s in zip(
                self.names, self.transforms, self.mean.tolist(), self.std.tolist(), strict=True
            )
        )
        return items
