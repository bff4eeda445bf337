"""Build a :class:`~kappaflow.models.base.KappaModel` from a ``conf/models/*.yaml`` node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kappaflow.features.composition import n_magpie_features
from kappaflow.models.base import Encoder, InputKind, KappaModel
from kappaflow.models.cgcnn import CGCNNEncoder, build_cgcnn
from kappaflow.models.descriptor_mlp import DescriptorMLPEncoder, build_descriptor_mlp
from kappaflow.models.megnet import MEGNetEncoder, build_megnet
from kappaflow.models.sevennet import SevenNetEncoder, build_sevennet

#: Config keys that describe the model or its input graphs but are not constructor arguments.
METADATA_KEYS = frozenset(
    {"name", "description", "max_neighbors", "input", "features", "published", "trained_on"}
)

_BUILDERS: dict[str, Callable[..., KappaModel]] = {
    "cgcnn": build_cgcnn,
    "megnet": build_megnet,
    "descriptor_mlp": build_descriptor_mlp,
    "sevennet": build_sevennet,
}


#: Encoder class of each model name: owns ``input_kind`` and the graph-settings rule.
_ENCODERS: dict[str, type[Encoder]] = {
    "cgcnn": CGCNNEncoder,
    "megnet": MEGNetEncoder,
    "descriptor_mlp": DescriptorMLPEncoder,
    "sevennet": SevenNetEncoder,
}


def model_names() -> list[str]:
    """Names accepted as ``model_cfg.name``."""
    return sorted(_BUILDERS)


def _card_get(model_cfg: DictConfig | Mapping[str, Any] | str, key: str) -> Any:
    if isinstance(model_cfg, str):
        return model_cfg if key == "name" else None
    return model_cfg.get(key)


def encoder_class(model_cfg: DictConfig | Mapping[str, Any] | str) -> type[Encoder]:
    """Return the encoder class of a model card (or of a model name).

    Raises:
        ValueError: unknown model name.
    """
    name = _card_get(model_cfg, "name")
    if name not in _ENCODERS:
        raise ValueError(f"unknown model name {name!r}; choose from {model_names()}")
    return _ENCODERS[name]


def input_kind(model_cfg: DictConfig | Mapping[str, Any] | str) -> InputKind:
    """``"graph"`` or ``"composition"``: what the model of this card (or name) reads.

    Owned by the encoder class (``Encoder.input_kind``), not inferred from the card's keys.
    """
    return encoder_class(model_cfg).input_kind


def check_graph_settings(
    model_cfg: DictConfig | Mapping[str, Any],
    graph_meta: Mapping[str, Any],
    source: str = "the graph cache",
) -> None:
    """Check graphs built with ``graph_meta`` (``cutoff``, ``max_neighbors``) against a card.

    The rule is the encoder's (:meth:`Encoder.check_graph_settings`): equal ``max_neighbors``;
    cache cutoff equal to the card's (CGCNN) or at least it (MEGNet filters edges itself).
    Composition models pass.

    Raises:
        GraphMismatchError: on a mismatch, naming both values and `dvc repro featurize`.
    """
    cls = encoder_class(model_cfg)
    cls.check_graph_settings(
        _card_get(model_cfg, "cutoff"),
        _card_get(model_cfg, "max_neighbors"),
        graph_meta.get("cutoff"),
        graph_meta.get("max_neighbors"),
        model=str(_card_get(model_cfg, "name")),
        source=source,
    )


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
    if input_kind(name) == "composition" and kwargs.pop("cutoff", None) is not None:
        raise ValueError(f"{name} uses no graph: its cutoff must be null")
    if name == "descriptor_mlp":
        kwargs["in_dim"] = _descriptor_in_dim(cfg)
    try:
        return _BUILDERS[name](n_targets=n_targets, **kwargs)
    except TypeError as err:
        raise TypeError(f"model config {name!r}: {err}") from err
