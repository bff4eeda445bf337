"""The champion: which registered κ ensemble ``predict`` and ``screen`` load, and loading it.

Loading never executes code from the registry (:mod:`kappaflow.registry.trust`): only the
version's ``ensemble`` artifact is downloaded, verified against its recorded sha256 digests and
built by the installed kappaflow; ``mlflow.pyfunc.load_model`` is not used.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kappaflow.evaluation.calibration import Calibration
from kappaflow.layout import project_root
from kappaflow.registry.trust import (
    DIR_SHA_TAG,
    ENSEMBLE_SUBPATH,
    SHA_TAG,
    UntrustedModelError,
    verify_ensemble_dir,
)

if TYPE_CHECKING:
    from kappaflow.registry.domain import DomainInfo
    from kappaflow.registry.ensemble import KappaEnsemble


class NoChampionError(RuntimeError):
    """No registered version has passed the promotion gate yet (``champion.json`` says why)."""


#: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``: the only URIs that can be verified.
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))/?")


def resolve_model(
    cfg: DictConfig | None, model_uri: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Return the model URI to load and what is known about it (the registry version).

    Default ``models:/<registry.model_name>@champion``; the alias must point at the version
    recorded in ``registry.champion_file`` (written by the ``register`` stage), so that the DVC
    dependency and the loaded model agree. When champion.json pins the resolved version (always
    for the champion alias), its digests are returned as ``info["pinned"]`` and loading checks
    them as well as the version's tags.

    Args:
        cfg: full config (None: no project; ``model_uri`` needed, checked against tags only).
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (None: champion).

    Returns:
        ``(uri, info)``; ``info`` holds ``name``, ``version``, ``dataset``, ``strategy``,
        ``log10_mae``, ``gated`` (the baseline-gate tag: ``true`` or ``false: <why>``; None
        when absent), the version's digest tags, ``pinned`` (champion.json digests or None)
        and ``pinned_by`` (its path).

    Raises:
        UntrustedModelError: not a registry URI; champion.json missing or pinning another
            version than the alias.
        ValueError: no ``cfg`` and no ``model_uri``.
        mlflow.exceptions.MlflowException: no such model, version or alias.
    """
    from mlflow import MlflowClient

    if model_uri:
        uri = model_uri
    elif cfg is not None:
        uri = f"models:/{cfg.registry.model_name}@champion"
    else:
        raise ValueError("no config (params.yaml) and no model URI: pass --model-uri")
    m = _MODEL_URI.fullmatch(uri)
    if m is None:
        raise UntrustedModelError(
            f"refusing {uri}: only registered versions (models:/<name>/<version> or "
            "models:/<name>@<alias>) carry the digests that predict/screen verify"
        )
    name, alias = m["name"], m["alias"]
    champion_alias = (
        cfg is not None and name == str(cfg.registry.model_name) and alias == "champion"
    )
    record_path = project_root() / str(cfg.registry.champion_file) if cfg is not None else None
    if champion_alias and record_path is not None and record_path.is_file():
        recorded = json.loads(record_path.read_text())
        if recorded.get("name") == name and recorded.get("version") is None:
            why = str(recorded.get("no_champion") or "none promoted").removeprefix("no champion: ")
            raise NoChampionError(
                f"no champion: {why} (the register stage "
                "promotes a candidate only when it beats every baseline on the same folds; see "
                "reports/registry/decision.md, or pass --model-uri models:/<name>/<version>)"
            )
    client = MlflowClient()
    if alias:
        version = client.get_model_version_by_alias(name, alias)
    else:
        version = client.get_model_version(name, m["version"])
    tags = dict(version.tags)
    info: dict[str, Any] = {"uri": uri, "name": name, "version": int(version.version)}
    info |= {
        k: tags.get(k) for k in ("dataset", "strategy", "log10_mae", "gated", SHA_TAG, DIR_SHA_TAG)
    }
    info |= {"pinned": None, "pinned_by": None}
    if cfg is None:
        return uri, info
    assert record_path is not None
    recorded: dict[str, Any] = {}
    if record_path.is_file():
        recorded = json.loads(record_path.read_text())
    elif champion_alias:
        raise UntrustedModelError(
            f"refusing {uri}: no {record_path}, so the champion cannot be verified; run "
            "`dvc repro register` (or `dvc pull`)"
        )
    pinned = recorded.get("name") == name and str(recorded.get("version")) == str(info["version"])
    if champion_alias and not pinned:
        raise UntrustedModelError(
            f"{uri} is version {info['version']} but {record_path} says "
            f"{recorded.get('name')} v{recorded.get('version')}: the registry changed after the "
            "register stage; run `dvc repro register`"
        )
    if pinned:
        info["pinned"] = {k: recorded.get(k) for k in (SHA_TAG, DIR_SHA_TAG)}
        info["pinned_by"] = str(record_path)
    return uri, info


@dataclass
class LoadedModel:
    """A verified registered ensemble, built by the installed kappaflow.

    Attributes:
        ensemble: the members (on the requested device).
        domain: the training domain (OOD checks).
        spec: ``ensemble.json`` (format, members, graph settings, ``meta`` tags).
        info: what :func:`resolve_model` returned about the version.
        sha256: its verified :func:`~kappaflow.registry.trust.ensemble_sha256`.
    """

    ensemble: KappaEnsemble
    domain: DomainInfo
    spec: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def download_ensemble(name: str, version: int | str, dst: str | Path) -> Path:
    """Download only the ``ensemble`` artifact of a model version into ``dst``.

    The pyfunc's code (``python_model``, ``code/``) and its MLmodel are not downloaded.

    Returns:
        The local ensemble directory.
    """
    import mlflow
    from mlflow import MlflowClient

    base = MlflowClient().get_model_version_download_uri(name, str(version))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{base.rstrip('/')}/{ENSEMBLE_SUBPATH}", dst_path=str(dst)
    )
    return Path(local)


def load_champion(uri: str, device: str, info: dict[str, Any] | None = None) -> LoadedModel:
    """Download, verify and build the registered ensemble at ``uri`` (moved to ``device``).

    Nothing from the download is imported or executed: the ensemble directory is checked
    (:func:`~kappaflow.registry.trust.verify_ensemble_dir`) and read as data with the installed
    :func:`~kappaflow.registry.pyfunc.load_ensemble_dir`.

    Args:
        uri: a registry URI (see :func:`resolve_model`).
        device: ``auto`` / ``cpu`` / ``cuda``.
        info: :func:`resolve_model`'s info for ``uri`` (None: resolved here without a config,
            so only the version's tags are checked).

    Raises:
        UntrustedModelError: the artifact does not match its recorded digests (or layout).
    """
    from kappaflow.registry.pyfunc import load_ensemble_dir

    if info is None:
        uri, info = resolve_model(None, uri)
    label = f"{info['name']} v{info['version']} ({uri})"
    with tempfile.TemporaryDirectory(prefix="kappaflow-model-") as tmp:
        local = download_ensemble(info["name"], info["version"], tmp)
        sha = verify_ensemble_dir(
            local,
            label,
            {k: info.get(k) for k in (SHA_TAG, DIR_SHA_TAG)},
            info.get("pinned"),
            info.get("pinned_by") or "models/champion.json",
        )
        ensemble, domain, spec = load_ensemble_dir(local, device)
    # from the verified ensemble.json (not the editable version tags)
    ensemble.calibration = Calibration.from_tags(spec.get("meta") or {})
    return LoadedModel(ensemble, domain, spec, info, sha)
