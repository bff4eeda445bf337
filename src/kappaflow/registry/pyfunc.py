"""The registrable model: an MLflow pyfunc that turns CIF text into κ (W/m/K) ± σ.

Logged as *models from code* (:mod:`kappaflow.registry.model_code` calls ``set_model``), so
loading it unpickles nothing: the weights are the members' one-file exports, read with
``torch.load(weights_only=True)``; the featurizer (CIF parser, structure checks, crystal
graphs) and the target transform travel as code (``code_paths``: the ``kappaflow`` package) and
as the members' own transform dicts. MLflow's PyTorch flavor is not used (its default "pt2"
export fails on PyG models, and pickled modules are not acceptable).

The pyfunc serves the MLflow UI / ``mlflow models serve``; loading it runs the code stored with
it. ``kappaflow predict``/``screen`` therefore never load it: they download the ``ensemble``
artifact only, verify its digests and build it with the installed kappaflow
(:mod:`kappaflow.registry.trust`, :func:`kappaflow.registry.champion.load_champion`).

Artifact ``ensemble/`` (see :func:`write_ensemble_dir`)::

    ensemble.json           format, member files, graph settings, σ definition, metadata
    members/member-00.pt    one file per member (kappaflow.training.export format; a
                            ``features`` member holds its scikit-learn head as arrays)
    domain.json             training elements, embedding statistics, OOD distance threshold
    train_embeddings.npy    standardized member-0 embeddings of the training materials

``predict`` takes a list of CIF strings or a DataFrame with a ``cif`` column (and optionally
``id``) and returns one row per input with the columns of
:data:`kappaflow.registry.predictor.COLUMNS` (κ and the band in W/m/K, log10 κ and σ in
decades); a bad CIF gives NaN κ and an ``error`` message for its row only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd

from kappaflow.registry.domain import DomainInfo
from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "kappaflow-ensemble/1"
ENSEMBLE_ARTIFACT = "ensemble"
SIGMA_DEFINITION = (
    "sigma_log10 = sample std (ddof=1) over ensemble members of log10 kappa (decades); "
    "kappa = 10**mean(log10 kappa) W/m/K; [kappa_lo68, kappa_hi68], [kappa_lo95, kappa_hi95]: "
    "conformal intervals (W/m/K) calibrated on out-of-fold residuals"
)
#: Distributions the featurizer and the models import (versions pinned to this environment).
#: ``torch`` is pinned without its local tag (``+cpu``/``+cu128``) so a GPU host installs its own.
REQUIREMENTS = (
    "mlflow",
    "torch",
    "torch-geometric",
    "numpy",
    "pandas",
    "scipy",
    "pymatgen",
    "gemmi",
    "spglib",
    "omegaconf",
)


def pip_requirements(composition: bool = False) -> list[str]:
    """Explicit pins of :data:`REQUIREMENTS` (+ ``matminer`` for composition members).

    Set explicitly because MLflow's requirement inference costs seconds and records the local
    CUDA/CPU build of torch.
    """
    names = [*REQUIREMENTS, *(["matminer"] if composition else [])]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def write_ensemble_dir(
    out: str | Path,
    member_paths: Sequence[str | Path],
    graph: GraphSettings,
    domain: DomainInfo,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Lay out an ensemble directory (the pyfunc's ``ensemble`` artifact).

    Args:
        out: target directory (created; must not hold another ensemble).
        member_paths: members' export files, copied as ``members/member-NN.pt``.
        graph: graph settings of the members' training graphs.
        domain: fitted training domain.
        meta: extra plain metadata (strategy, dataset, metric, ...).

    Returns:
        ``out``.
    """
    d = Path(out)
    (d / "members").mkdir(parents=True, exist_ok=True)
    names = []
    for k, p in enumerate(member_paths):
        name = f"members/member-{k:02d}.pt"
        shutil.copy2(p, d / name)
        names.append(name)
    domain.save(d)
    spec = {
        "format": ENSEMBLE_FORMAT,
        "members": names,
        "member_sources": [Path(p).name for p in member_paths],
        "graph": graph.to_dict(),
        "sigma": SIGMA_DEFINITION,
        "meta": dict(meta or {}),
    }
    (d / "ensemble.json").write_text(json.dumps(spec, indent=1) + "\n")
    return d


def load_ensemble_dir(
    path: str | Path, device: str = "auto"
) -> tuple[KappaEnsemble, DomainInfo, dict[str, Any]]:
    """Load an ensemble directory written by :func:`write_ensemble_dir`.

    Returns:
        ``(ensemble, domain, spec)`` where ``spec`` is the content of ``ensemble.json``.

    Raises:
        ValueError: not a kappaflow ensemble directory.
    """
    d = Path(path)
    spec = json.loads((d / "ensemble.json").read_text())
    if spec.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{d}: not a {ENSEMBLE_FORMAT} directory (format={spec.get('format')})")
    g = spec["graph"]
    mn = g.get("max_neighbors")
    graph = GraphSettings(float(g["cutoff"]), None if mn is None else int(mn))
    ensemble = KappaEnsemble.from_files([d / m for m in spec["members"]], graph, device)
    return ensemble, DomainInfo.load(d), spec


def _as_frame(model_input: Any) -> pd.DataFrame:
    """Normalize the accepted inputs to a frame with ``id`` and ``cif`` (text) columns."""
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, Mapping):
        model_input = pd.DataFrame(dict(model_input))
    if isinstance(model_input, list | tuple):
        bad = [type(x).__name__ for x in model_input if not isinstance(x, str)]
        if bad:
            raise TypeError(f"expected a list of CIF strings, got items of type {sorted(set(bad))}")
        frame = pd.DataFrame({"cif": list(model_input)})
    elif isinstance(model_input, pd.DataFrame):
        if "cif" not in model_input.columns:
            raise ValueError(
                f"input DataFrame needs a 'cif' column (CIF text); got {list(model_input.columns)}"
            )
        frame = model_input.reset_index(drop=True)
    else:
        raise TypeError(
            "input must be CIF text, a list of CIF strings or a DataFrame with a 'cif' column, "
            f"got {type(model_input).__name__}"
        )
    ids = frame["id"].astype(str) if "id" in frame.columns else frame.index.astype(str)
    cifs = [c if isinstance(c, str) else "" for c in frame["cif"].tolist()]
    return pd.DataFrame({"id": list(ids), "cif": cifs})


class KappaEnsembleModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: CIF text -> κ (W/m/K), log10 κ and σ (decades) with domain flags.

    Environment variables read at load time: ``KAPPAFLOW_DEVICE`` (``auto``/``cpu``/``cuda``;
    default ``auto``) and ``KAPPAFLOW_BATCH_SIZE`` (crystals per ensemble batch, default 64).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load members, graph settings and training domain from the ``ensemble`` artifact."""
        import os

        device = os.environ.get("KAPPAFLOW_DEVICE", "auto")
        self.batch_size = int(os.environ.get("KAPPAFLOW_BATCH_SIZE", "64"))
        self.ensemble, self.domain, self.spec = load_ensemble_dir(
            context.artifacts[ENSEMBLE_ARTIFACT], device
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Predict κ for CIFs.

        Args:
            context: MLflow context (unused after loading).
            model_input: DataFrame with ``cif`` (and optional ``id``) columns; a list of CIF
                strings (or one string) is accepted too.
            params: optional ``{"batch_size": int}``.

        Returns:
            One row per input: ``id, formula, kappa (W/m/K), log10_kappa, sigma_log10
            (decades), kappa_lo68/hi68, kappa_lo95/hi95 (W/m/K), in_domain, ood_reason,
            nn_distance, error``.
        """
        from kappaflow.registry.predictor import predict_cifs

        frame = _as_frame(model_input)
        batch = int((params or {}).get("batch_size") or self.batch_size)
        return predict_cifs(
            self.ensemble, self.domain, frame["cif"].tolist(), frame["id"].tolist(), batch
        )


def _clean_code_copy(dest: Path) -> Path:
    """Copy the ``kappaflow`` package (no ``__pycache__``) to ``dest/kappaflow``."""
    import kappaflow

    src = Path(kappaflow.__file__).resolve().parent
    target = dest / "kappaflow"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_ensemble_model(
    ensemble_dir: str | Path,
    name: str = "model",
    metadata: Mapping[str, Any] | None = None,
    composition: bool = False,
) -> ModelInfo:
    """Log an ensemble directory as a pyfunc model in the active MLflow run.

    Args:
        ensemble_dir: written by :func:`write_ensemble_dir`.
        name: the logged model's name in the run.
        metadata: plain metadata stored in the MLmodel file.
        composition: members take composition input (adds ``matminer`` to the requirements).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what the registry registers).
    """
    code_file = Path(__file__).with_name("model_code.py")
    # No signature on purpose: MLflow's schema enforcement would reject the list-of-CIFs input.
    # Its "Failed to infer model signature" warning about that is therefore silenced.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    with tempfile.TemporaryDirectory(prefix="kappaflow-code-") as tmp:
        package = _clean_code_copy(Path(tmp))
        pyfunc_log.setLevel(logging.ERROR)
        try:
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(code_file),
                artifacts={ENSEMBLE_ARTIFACT: str(Path(ensemble_dir).resolve())},
                code_paths=[str(package)],
                pip_requirements=pip_requirements(composition),
                metadata=dict(metadata or {}),
            )
        finally:
            pyfunc_log.setLevel(level)
