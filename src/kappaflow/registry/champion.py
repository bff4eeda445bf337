"""The champion: which registered κ ensemble ``predict`` and ``screen`` load, and loading it."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig

from kappaflow.layout import project_root


def resolve_model(cfg: DictConfig, model_uri: str | None = None) -> tuple[str, dict[str, Any]]:
    """Return the model URI to load and what is known about it.

    Default ``models:/<registry.model_name>@champion``; the alias must point at the version
    recorded in ``registry.champion_file`` (written by the ``register`` stage), so that the DVC
    dependency and the loaded model agree.

    Raises:
        RuntimeError: the alias points elsewhere than champion.json says.
    """
    from mlflow import MlflowClient

    if model_uri:
        return model_uri, {"uri": model_uri}
    name = str(cfg.registry.model_name)
    uri = f"models:/{name}@champion"
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    info: dict[str, Any] = {"uri": uri, "name": name, "version": int(version.version)}
    info |= {k: version.tags.get(k) for k in ("dataset", "strategy", "log10_mae")}
    record = project_root() / str(cfg.registry.champion_file)
    if record.is_file():
        recorded = json.loads(record.read_text())
        if recorded.get("name") == name and int(recorded["version"]) != info["version"]:
            raise RuntimeError(
                f"{uri} is version {info['version']} but {record} says {recorded['version']}: "
                "the registry changed after the register stage; run `dvc repro register`"
            )
    return uri, info


def load_champion(uri: str, device: str) -> Any:
    """Load the pyfunc at ``uri`` and return its :class:`KappaEnsembleModel` (moved to device)."""
    import mlflow

    model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    model.ensemble.to(device)
    return model
