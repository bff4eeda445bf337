"""One-file model export: weights + target transform + model config, ``weights_only``-safe.

The file is a plain dict ``{"format", "state_dict", "transform", "model_cfg", "n_targets",
"target_names", "meta"}`` written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``; the model is rebuilt with
``kappaflow.models.build_model(model_cfg, n_targets)``.

A model whose head is a scikit-learn regressor stored as arrays (the ``features`` strategy:
frozen encoder + :class:`kappaflow.models.sklearn_head.SklearnHead`, which outputs log10 κ, κ in
W/m/K) has format :data:`SKLEARN_HEAD_FORMAT`, an extra ``"head"`` entry (the head's plain state)
and only the other modules' weights in ``state_dict``; its transform is identity-standardized
(mean 0, std 1). A loader that knows only :data:`FORMAT` refuses such a file rather than
predicting with an untrained MLP head.
"""

from __future__ import annotations

import pickle
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
from kappaflow.models.sklearn_head import SklearnHead, UnsupportedHeadError, head_from_state
from kappaflow.training.target_transform import TargetTransform

FORMAT = "kappaflow-model/1"
#: Format of a model with a :class:`~kappaflow.models.sklearn_head.SklearnHead` (see above).
SKLEARN_HEAD_FORMAT = "kappaflow-model/1+sklearn-head"


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
        model: the trained ``KappaModel``; one whose ``head`` is a
            :class:`~kappaflow.models.sklearn_head.SklearnHead` is written as
            :data:`SKLEARN_HEAD_FORMAT` (the head as plain arrays, never pickled).
        transform: its fitted :class:`TargetTransform`.
        model_cfg: the ``model`` config node used to build it.
        meta: extra plain metadata (dataset, split digest, metrics, MLflow run id, ...).

    Returns:
        The written path.
    """
    head = getattr(model, "head", None)
    sklearn_head = isinstance(head, SklearnHead)
    state = model.state_dict()
    payload: dict[str, Any] = {
        "format": SKLEARN_HEAD_FORMAT if sklearn_head else FORMAT,
        "state_dict": {
            k: v.detach().cpu().clone()
            for k, v in state.items()
            if not (sklearn_head and k.startswith("head."))
        },
        "transform": transform.to_dict(),
        "model_cfg": to_plain(model_cfg),
        "n_targets": int(transform.n_targets),
        "target_names": list(transform.names),
        "meta": to_plain(dict(meta or {})),
    }
    if sklearn_head:
        assert isinstance(head, SklearnHead)
        payload["head"] = head.to_state()
    # the temporary file is named <name>.tmp, so torch's archive name is the same on every run
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TargetTransform, dict[str, Any]]:
    """Load a file written by :func:`save_model` (``torch.load(weights_only=True)``).

    A :data:`SKLEARN_HEAD_FORMAT` file gets its head rebuilt from the stored arrays
    (:func:`kappaflow.models.sklearn_head.head_from_state`); its weights must cover exactly the
    model's other modules.

    Returns:
        ``(model in eval mode, transform, info)`` where ``info`` holds ``model_cfg``,
        ``n_targets``, ``target_names`` and ``meta``.

    Raises:
        ValueError: not a kappaflow export (another format, or Python objects that a
            ``weights_only`` load refuses, e.g. a pickled scikit-learn model), or a head /
            weights / transform that does not fit the model (names the file and the problem).
    """
    from omegaconf import OmegaConf

    from kappaflow.models import build_model

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused: it holds Python objects, not only tensors and plain data "
            f"(kappaflow never unpickles a model file; re-export it): {err}"
        ) from err
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (FORMAT, SKLEARN_HEAD_FORMAT):
        raise ValueError(f"{path}: not a {FORMAT} file (format={fmt!r})")
    model = build_model(OmegaConf.create(payload["model_cfg"]), int(payload["n_targets"]))
    transform = TargetTransform.from_dict(payload["transform"])
    if fmt == SKLEARN_HEAD_FORMAT:
        _attach_sklearn_head(path, model, payload, transform)
    else:
        model.load_state_dict(payload["state_dict"])
    model.to(map_location).eval()
    transform = transform.to(map_location)
    info = {k: payload[k] for k in ("model_cfg", "n_targets", "target_names", "meta")}
    return model, transform, info


def _attach_sklearn_head(
    path: str | Path, model: nn.Module, payload: Mapping[str, Any], transform: TargetTransform
) -> None:
    """Give ``model`` the stored array head and load the other weights, all strictly checked.

    Raises:
        ValueError: unsupported/tampered head (:class:`UnsupportedHeadError`), a head that does
            not fit the encoder, weights for other modules than the model's, or a transform
            that is not the head's scale with identity standardization.
    """
    try:
        head = head_from_state(payload.get("head"))
    except UnsupportedHeadError as err:
        raise UnsupportedHeadError(f"{path}: refused: {err}") from err
    if head.in_dim != model.embed_dim or head.n_targets != int(payload["n_targets"]):
        raise UnsupportedHeadError(
            f"{path}: refused: head maps {head.in_dim} -> {head.n_targets} but the model embeds "
            f"{model.embed_dim} and has {payload['n_targets']} targets"
        )
    identity = transform.to_dict()
    if (
        identity["transforms"] != [head.transform] * head.n_targets
        or any(m != 0.0 for m in identity["mean"])
        or any(s != 1.0 for s in identity["std"])
    ):
        raise ValueError(
            f"{path}: refused: transform {identity} is not the head's scale "
            f"({head.transform}) with mean 0 and std 1"
        )
    weights = dict(payload["state_dict"])
    if any(k.startswith("head.") for k in weights):
        raise ValueError(f"{path}: refused: MLP head weights beside the stored array head")
    model.head = head
    own = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    try:
        model.load_state_dict({**weights, **own}, strict=True)
    except RuntimeError as err:  # missing / unexpected / misshapen encoder weights
        raise ValueError(f"{path}: refused: weights do not fit the model card: {err}") from err


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
