"""One-file model export: weights + target transform + model config, ``weights_only``-safe.

The file is a plain dict ``{"format", "state_dict", "transform", "model_cfg", "n_targets",
"target_names", "meta"}`` written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``; the model is rebuilt with
``kappaflow.models.build_model(model_cfg, n_targets)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from kappaflow.config import to_plain
from kappaflow.io_utils import atomic_write
from kappaflow.training.target_transform import TargetTransform

FORMAT = "kappaflow-model/1"


def save_model(
    path: str | Path,
    model: nn.Module,
    transform: TargetTransform,
    model_cfg: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the model, its target transform and config to ONE file.

    Args:
        path: output file (``.pt``); parent directories are created.
        model: the trained ``KappaModel``.
        transform: its fitted :class:`TargetTransform`.
        model_cfg: the ``model`` config node used to build it.
        meta: extra plain metadata (dataset, split digest, metrics, MLflow run id, ...).

    Returns:
        The written path.
    """
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "transform": transform.to_dict(),
        "model_cfg": to_plain(model_cfg),
        "n_targets": int(transform.n_targets),
        "target_names": list(transform.names),
        "meta": to_plain(dict(meta or {})),
    }
    # the temporary file is named <name>.tmp, so torch's archive name is the same on every run
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TargetTransform, dict[str, Any]]:
    """Load a file written by :func:`save_model` (``torch.load(weights_only=True)``).

    Returns:
        ``(model in eval mode, transform, info)`` where ``info`` holds ``model_cfg``,
        ``n_targets``, ``target_names`` and ``meta``.
    """
    from omegaconf import OmegaConf

    from kappaflow.models import build_model

    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={payload.get('format')!r})")
    model = build_model(OmegaConf.create(payload["model_cfg"]), int(payload["n_targets"]))
    model.load_state_dict(payload["state_dict"])
    model.to(map_location).eval()
    transform = TargetTransform.from_dict(payload["transform"]).to(map_location)
    info = {k: payload[k] for k in ("model_cfg", "n_targets", "target_names", "meta")}
    return model, transform, info


@torch.no_grad()
def predict(
    model: nn.Module,
    transform: TargetTransform,
    dataset: Dataset[Any] | Sequence[Any],
    batch_size: int = 256,
) -> tuple[list[str], np.ndarray]:
    """Predict every graph of ``dataset`` in original units.

    Args:
        model: a ``KappaModel`` (its device is used).
        transform: the model's target transform.
        dataset: graphs (PyG ``Data`` with ``material_id``).
        batch_size: graphs per batch.

    Returns:
        ``(ids, preds)``: material ids in dataset order and ``[N, T]`` float64 predictions in raw
        units (κ in W/m/K).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    transform = transform.to(device)
    ids: list[str] = []
    out: list[np.ndarray] = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):  # type: ignore[arg-type]
        batch = batch.to(device)
        z = model(batch).float()
        out.append(transform.inverse(z).cpu().double().numpy())
        ids.extend(str(i) for i in batch.material_id)
    model.train(was_training)
    n_t = transform.n_targets
    return ids, (np.concatenate(out) if out else np.zeros((0, n_t)))
