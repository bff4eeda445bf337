"""MLflow runs for pipeline stages: tracking URI, experiments, provenance tags, params, inputs.

Tracking URI precedence: ``MLFLOW_TRACKING_URI`` (env) > ``tracking.uri`` (config) >
``sqlite:///<project root>/mlflow.db``. Artifacts of new experiments go to
``tracking.artifact_location`` or ``<project root>/mlruns``.

Runs are grouped by purpose (:data:`STAGE_PURPOSE`): each purpose has its own experiment
(``tracking.experiments.<purpose>``, default ``<tracking.experiment>-<purpose>``), tagged as
classic model training (:data:`EXPERIMENT_KIND_TAG`) so that MLflow 3 opens it in the model
training view. A stage logs only the config subtrees it reads as params
(``start_stage_run(..., params=[...])``) and the whole resolved config as ``config.yaml``.
Names of runs and metrics follow :mod:`kappaflow.tracking.names`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from kappaflow.io_utils import file_sha256  # re-exported: the one implementation lives there
from kappaflow.layout import project_root
from kappaflow.tracking.git import git_info
from kappaflow.tracking.names import PURPOSES, STAGE_PURPOSE

if TYPE_CHECKING:
    import mlflow
    import pandas as pd

log = logging.getLogger(__name__)

#: Defaults of the ``tracking`` config node (conf/tracking/local.yaml mirrors these).
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "uri": None,
    "experiment": "kappaflow",
    "experiments": {},
    "aliases": {},
    "artifact_location": None,
    "log_checkpoints": True,
    "system_metrics": True,
}
#: Experiment tag MLflow 3's UI reads to pick the experiment's view, and the value that selects
#: the classic model-training view (runs table, charts) instead of the GenAI one (traces, judges).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The artifact holding the full resolved config of a stage run.
CONFIG_ARTIFACT = "config.yaml"
MAX_PARAM_CHARS = 6000
PARAM_BATCH = 100
STRUCTURE_COLUMNS = ("lattice", "numbers", "frac_coords", "cif")


def tracking_cfg(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the ``tracking`` node of a full config (or the node itself) over :data:`DEFAULTS`."""
    if cfg is None:
        return dict(DEFAULTS)
    node: Any = cfg.get("tracking", cfg) if isinstance(cfg, Mapping | DictConfig) else cfg
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    keys = set(DEFAULTS)
    return {**DEFAULTS, **{k: v for k, v in dict(node or {}).items() if k in keys}}


def quiet_mlflow() -> None:
    """Disable telemetry and quieten MLflow/alembic logging (idempotent)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("alembic", "mlflow.store", "mlflow.tracking.fluent", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(cfg: Mapping[str, Any] | None = None) -> str:
    """Resolve the tracking URI: env ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` > project sqlite."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = tracking_cfg(cfg)["uri"]
    if uri:
        return str(uri)
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_location(cfg: Mapping[str, Any] | None = None) -> str | None:
    """Artifact root URI for new experiments.

    ``tracking.artifact_location`` if set, else ``<project root>/mlruns`` for local stores and
    None (the server's default artifact root) for ``http(s)`` tracking servers.
    """
    loc = tracking_cfg(cfg)["artifact_location"]
    if loc and "://" in str(loc):
        return str(loc)
    if not loc and tracking_uri(cfg).startswith(("http://", "https://", "databricks")):
        return None
    path = Path(loc) if loc else project_root() / "mlruns"
    if not path.is_absolute():
        path = project_root() / path
    return path.resolve().as_uri()


def experiment_name(cfg: Mapping[str, Any] | None, purpose: str | None = None) -> str:
    """Name of the experiment of ``purpose`` (:data:`~kappaflow.tracking.names.PURPOSES`).

    ``tracking.experiments.<purpose>`` if set, else ``<tracking.experiment>-<purpose>``; with
    ``purpose`` None, ``tracking.experiment`` itself.

    Raises:
        ValueError: unknown purpose.
    """
    tcfg = tracking_cfg(cfg)
    prefix = str(tcfg["experiment"])
    if purpose is None:
        return prefix
    if purpose not in PURPOSES:
        raise ValueError(f"unknown experiment purpose {purpose!r}; known: {list(PURPOSES)}")
    return str((tcfg["experiments"] or {}).get(purpose) or f"{prefix}-{purpose}")


def setup_experiment(cfg: Mapping[str, Any] | None = None, purpose: str | None = None) -> str:
    """Point MLflow at the configured URI and the experiment of ``purpose``; return its id.

    The experiment (:func:`experiment_name`) is created if missing and tagged
    ``mlflow.experimentKind = custom_model_development`` (MLflow 3's model-training view); an
    existing untagged one gets the tag if this user may set it.
    """
    import mlflow

    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    name = experiment_name(cfg, purpose)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = mlflow.create_experiment(
                name,
                artifact_location=artifact_location(cfg),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, "kappaflow.purpose": purpose or ""},
            )
        except mlflow.exceptions.MlflowException:  # created concurrently
            exp = mlflow.get_experiment_by_name(name)
            assert exp is not None
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
        warn_client_side_artifacts(tracking_uri(cfg), name, exp.artifact_location)
    if exp is not None and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        try:
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException as exc:  # e.g. READ permission on a team server
            log.warning("could not tag experiment %r as model training: %s", name, exc)
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def warn_client_side_artifacts(uri: str, experiment: str, location: str | None) -> bool:
    """Warn when a tracking server's experiment keeps artifacts on one client's disk.

    An experiment first created with a client-side store (``sqlite:///…``, ``postgresql://…``)
    has a local artifact location (``file:///…/mlruns`` or a relative ``./mlruns``): runs
    logged through a server then write their artifacts to whichever machine logs them, not to
    the server's ``--artifacts-destination``. Experiments created through the server get
    ``mlflow-artifacts:/<id>``.

    Returns:
        True if it warned.
    """
    if not uri.startswith(("http://", "https://")) or not location:
        return False
    scheme = location.split(":", 1)[0].lower() if ":" in location else ""
    if scheme not in ("", "file"):  # mlflow-artifacts:, s3:, gs:, ... are shared stores
        return False
    log.warning(
        "experiment %r on %s stores artifacts at %s, a path on the machine that created it: "
        "artifacts of runs logged through the server land on each client's disk. Use a new "
        "experiment created through the server (tracking.experiment=...) for server-side "
        "artifacts (mlflow-artifacts:/...).",
        experiment,
        uri,
        location,
    )
    return True


def flatten_params(cfg: Mapping[str, Any] | DictConfig) -> dict[str, str]:
    """Flatten a (resolved) config to ``{"a.b.c": str(value)}``, values cut to 6000 chars."""
    from kappaflow.config import flatten

    flat = flatten(cfg if isinstance(cfg, DictConfig) else dict(cfg))
    out = {}
    for k, v in flat.items():
        s = "null" if v is None else str(v)
        out[k] = s if len(s) <= MAX_PARAM_CHARS else s[: MAX_PARAM_CHARS - 3] + "..."
    return out


def config_params(
    cfg: Mapping[str, Any] | DictConfig, keys: Iterable[str], drop: Iterable[str] = ()
) -> dict[str, str]:
    """Flattened params of the config subtrees ``keys`` (dot paths, e.g. ``models.cgcnn``).

    Args:
        cfg: the full config.
        keys: dot paths of the subtrees (or leaves) a stage reads; missing ones are skipped.
        drop: dot-path prefixes left out (e.g. ``evaluation.published``: quoted numbers, not
            settings).

    Returns:
        ``{"<key>.<sub>...": str(value)}`` as :func:`flatten_params`.
    """
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    out: dict[str, str] = {}
    for key in keys:
        node = OmegaConf.select(conf, key, default=None)
        if node is None:
            continue
        if isinstance(node, DictConfig):
            out.update({f"{key}.{k}": v for k, v in flatten_params(node).items()})
        else:
            value = (
                OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            )
            out.update(flatten_params({key: value}))
    prefixes = tuple(drop)
    if prefixes:
        out = {k: v for k, v in out.items() if not k.startswith(prefixes)}
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run in batches of 100 (MLflow's per-request limit)."""
    import mlflow

    items = list(params.items())
    for i in range(0, len(items), PARAM_BATCH):
        try:
            mlflow.log_params(dict(items[i : i + PARAM_BATCH]))
        except mlflow.exceptions.MlflowException as exc:  # e.g. a resumed run with changed params
            log.warning("could not log params %d..%d: %s", i, i + PARAM_BATCH, exc)


def _provenance_tags(stage: str, dvc_stage: str | None) -> dict[str, str]:
    import kappaflow

    info = git_info(project_root())
    tags = {
        "kappaflow.stage": stage,
        "kappaflow.version": str(kappaflow.__version__),
        "git.commit": info.commit or "unknown",
        "git.dirty": "unknown" if info.dirty is None else str(info.dirty).lower(),
    }
    if info.commit:
        tags["mlflow.source.git.commit"] = info.commit
    if info.branch:
        tags["mlflow.source.git.branch"] = info.branch
    dvc = dvc_stage or os.environ.get("KAPPAFLOW_DVC_STAGE") or os.environ.get("DVC_STAGE")
    if dvc:
        tags["dvc.stage"] = dvc
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _resumable_run_id(run_id_file: Path | None) -> str | None:
    import mlflow

    if run_id_file is None or not run_id_file.is_file():
        return None
    run_id = run_id_file.read_text().strip()
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("run id %s in %s not found in the tracking store; new run", run_id, run_id_file)
        return None
    return run_id


@contextmanager
def start_stage_run(
    cfg: Mapping[str, Any] | DictConfig,
    stage: str,
    run_name: str | None = None,
    nested: bool = False,
    *,
    dvc_stage: str | None = None,
    run_id_file: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    params: Iterable[str] = (),
    drop_params: Iterable[str] = (),
    extra_params: Mapping[str, Any] | None = None,
    purpose: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun | None]:
    """Open an MLflow run for a pipeline stage, with provenance and the config it reads.

    The run goes to the experiment of ``purpose`` (default: :data:`STAGE_PURPOSE` of ``stage``;
    :func:`setup_experiment`). Sets tags (``kappaflow.stage``, ``kappaflow.version``,
    ``git.commit`` / ``mlflow.source.git.commit``, ``git.dirty``, ``dvc.stage`` from
    ``dvc_stage`` or env ``KAPPAFLOW_DVC_STAGE``/``DVC_STAGE``), logs the config subtrees
    ``params`` (and ``extra_params``) as params and the whole resolved config as the artifact
    ``config.yaml``.

    Args:
        cfg: the full config (its ``tracking`` node configures MLflow).
        stage: stage name (e.g. ``pretrain``, ``finetune``).
        run_name: MLflow run name (default: ``stage``; see
            :func:`~kappaflow.tracking.names.run_label`).
        nested: open as a child of the active run.
        dvc_stage: DVC stage name (e.g. ``pretrain@cgcnn``).
        run_id_file: if given, the run id is written there; when the file already names an
            existing run (a crashed run being resumed), that run is continued instead.
        tags: extra tags.
        params: dot paths of the config subtrees the stage reads (:func:`config_params`).
        drop_params: dot-path prefixes left out of them.
        extra_params: further params (e.g. counts of the stage's data), logged as given.
        purpose: experiment purpose; default from ``stage``.
        system_metrics: sample CPU / memory / GPU use every 10 s as ``system/*`` metrics
            (long runs; needs psutil, off when ``tracking.system_metrics`` is false).

    Yields:
        The active run, or None when ``tracking.enabled`` is false.
    """
    tcfg = tracking_cfg(cfg)
    if not tcfg["enabled"]:
        yield None
        return
    import mlflow

    setup_experiment(cfg, purpose or STAGE_PURPOSE.get(stage, "data"))
    rid_path = Path(run_id_file) if run_id_file is not None else None
    resume_id = _resumable_run_id(rid_path)
    all_tags = {**_provenance_tags(stage, dvc_stage), **dict(tags or {})}
    with mlflow.start_run(
        run_id=resume_id,
        run_name=None if resume_id else (run_name or stage),
        nested=nested,
        tags=None if resume_id else all_tags,
        log_system_metrics=bool(system_metrics and tcfg["system_metrics"]) or None,
    ) as run:
        if resume_id:
            mlflow.set_tags(all_tags)
        if rid_path is not None:
            rid_path.parent.mkdir(parents=True, exist_ok=True)
            rid_path.write_text(run.info.run_id + "\n")
        resolved = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        logged = config_params(resolved, params, drop_params)
        logged.update({k: "null" if v is None else str(v) for k, v in (extra_params or {}).items()})
        log_params(logged)
        mlflow.log_text(OmegaConf.to_yaml(resolved, resolve=True), CONFIG_ARTIFACT)
        yield run


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = [n for n in pq.read_schema(path).names if n not in STRUCTURE_COLUMNS]
        return pd.read_parquet(path, columns=names)
    return pd.read_csv(path)


def log_dataset(
    df_or_path: pd.DataFrame | str | Path,
    name: str,
    digest: str | None = None,
    context: str = "train",
    *,
    source: str | None = None,
    targets: str | None = None,
) -> None:
    """Record a dataset as an input of the active run (``mlflow.log_input``).

    Args:
        df_or_path: a DataFrame, or a prepared ``.parquet``/``.csv`` file (structure columns
            ``lattice``/``numbers``/``frac_coords``/``cif`` are not profiled).
        name: dataset name (e.g. ``aflow_agl``).
        digest: content digest; default: sha256 of the file (required for DataFrames unless
            MLflow's own hash is acceptable).
        context: ``train``, ``val``, ``test``, ``pretrain``, ...
        source: source URI/path (default: the file path).
        targets: name of the target column, if any.
    """
    import mlflow

    if isinstance(df_or_path, str | Path):
        path = Path(df_or_path)
        df = _read_table(path)
        digest = digest or file_sha256(path)
        source = source or str(path.resolve())
    else:
        df = df_or_path.drop(columns=[c for c in STRUCTURE_COLUMNS if c in df_or_path.columns])
    if targets is not None and targets not in df.columns:
        targets = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(
            df,
            source=source or name,
            name=name,
            digest=digest[:36] if digest else None,
            targets=targets,
        )
        mlflow.log_input(ds, context=context, tags={"sha256": digest} if digest else None)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a local file or directory as an artifact of the active run."""
    import mlflow

    p = Path(path)
    if p.is_dir():
        mlflow.log_artifacts(str(p), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(p), artifact_path=artifact_path)


def log_figure(figure: Any, artifact_file: str, close: bool = True) -> None:
    """Log a matplotlib figure (``artifact_file`` like ``plots/parity.png``); closes it."""
    import mlflow

    mlflow.log_figure(figure, artifact_file)
    if close:
        import matplotlib.pyplot as plt

        plt.close(figure)


def log_model_file(path: str | Path, artifact_path: str = "model") -> None:
    """Log an exported model / checkpoint file under ``artifact_path``."""
    log_artifact(path, artifact_path=artifact_path)
