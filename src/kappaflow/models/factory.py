"""Build a :class:`~kappaflow.models.base.KappaModel` from a ``conf/models/*.yaml`` node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kappaflow.features.composition import n_magpie_features
from kappaflow.models.base import KappaModel
from kappaflow.models.cgcnn import build_cgcnn
from kappaflow.models.descriptor_mlp import build_descriptor_mlp
from kappaflow.models.megnet import build_megnet

#: Config keys that describe the model or its input graphs but are not constructor arguments.
METADATA_KEYS = frozenset(
    {"name", "description", "max_neighbors", "input", "features", "published"}
)

_BUILDERS: dict[str, Callable[..., KappaModel]] = {
    "cgcnn": build_cgcnn,
    "megnet": build_megnet,
    "descriptor_mlp": build_descriptor_mlp,
}


def model_names() -> list[str]:
    """Names accepted as ``model_cfg.name``."""
    return sorted(_BUILDERS)


def _descriptor_in_dim(cfg: Mapping[str, Any]) -> int:
    if cfg.get("in_dim") is not None:
        return int(cfg["in_dim"])
    features = cfg.get("features") or {}
    kind = features.get("kind", "magpie")
    if kind != "magpie":
        raise ValueError(f"descriptor_mlp: set in_dim explicitly for features.kind={kind!r}")
    return n_magpie_features(features.get("extras", ()))


def build_model(model_cfg: DictConfig | Mapping[str, Any], n_targets: int) -> KappaModel:
    """Build the model named by ``model_cfg.name`` with all sizes taken from the config.

    Every key other than :data:`METADATA_KEYS` is passed to the model's builder
    (:func:`~kappaflow.models.cgcnn.build_cgcnn`, :func:`~kappaflow.models.megnet.build_megnet`,
    :func:`~kappaflow.models.descriptor_mlp.build_descriptor_mlp`), so a misspelt key raises.
    For ``descriptor_mlp`` a null/missing ``in_dim`` is derived from ``features``
    (``kind: magpie`` and ``extras``).

    Args:
        model_cfg: the ``model`` config node (``conf/models/<name>.yaml``).
        n_targets: number of regression targets of the head.

    Returns:
        The freshly initialised model.

    Raises:
        ValueError: unknown model name.
        TypeError: a config key the builder does not accept.
    """
    cfg: dict[str, Any] = (
        OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[assignment]
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    name = cfg.get("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown model name {name!r}; choose from {model_names()}")
    kwargs = {k: v for k, v in cfg.items() if k not in METADATA_KEYS}
    if name == "descriptor_mlp":
        if kwargs.pop("cutoff", None) is not None:
            raise ValueError("descriptor_mlp uses no graph: its cutoff must be null")
        kwargs["in_dim"] = _descriptor_in_dim(cfg)
    try:
        return _BUILDERS[name](n_targets=n_targets, **kwargs)
    except TypeError as err:
        raise TypeError(f"model config {name!r}: {err}") from err
