"""The ``pretrain`` stage: train an encoder on big (or feature-property) data before transfer.

One run per entry of ``pretrain.runs`` (a DVC foreach): e.g. CGCNN and MEGNet on 75k Materials
Project formation energies + band gaps (TL-CGCNN, ParAIsite), and the descriptor MLP on Ju et al.'s
scattering phase space (log10 cm). ``pretrain.runs`` holds only the runs in use: the selected
transfer strategies and the studies each compose their run's recipe
(``conf/pretrain/runs/<run>.yaml``), e.g. MEGNet only with ``two_stage``. Leakage control:
materials of the κ sets named in ``pretrain.exclude_materials_of`` are removed before splitting.
The held-out test split (grouped by reduced formula) is never used for early stopping or selection;
its metrics are reported next to a mean predictor fitted on the training split and the published
numbers of the model card.

Outputs (paths relative to the project root)::

    models/pretrain/<run>.pt            exported model (weights + target transform + card)
    data/splits/pretrain_<run>.csv      id, role (train / val / test / unused / excluded)
    metrics/pretrain_<run>.json         test metrics, baseline, published, timing (full record)
    metrics/headline/pretrain_<run>.json  test MAE per target, epochs, s/epoch (DVC metrics)
    plots/pretrain/<run>/               history.csv (DVC plot), learning curve + parity PNGs
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.data.leakage import exclude_overlapping, material_keys
from kappaflow.data.splits import train_val_test_split
from kappaflow.evaluation.baselines import MeanPredictor
from kappaflow.evaluation.metrics import basic_metrics, regression_metrics
from kappaflow.evaluation.plots import learning_curve_plot, parity_plot
from kappaflow.io_utils import RESULT_CODE, content_key, write_json, write_metrics
from kappaflow.layout import (
    dataset_spec,
    graph_cache_path,
    interim_dir,
    load_prepared,
    project_root,
)
from kappaflow.models import build_model
from kappaflow.tracking import log_dataset, start_stage_run
from kappaflow.tracking.names import is_count, run_label, unit_suffix
from kappaflow.tracking.runs import file_sha256, log_artifact
from kappaflow.training.callbacks import EpochHistory, read_history
from kappaflow.training.datamodule import GraphDataModule
from kappaflow.training.export import predict, save_model
from kappaflow.training.inputs import RowsView, input_kind, load_model_inputs
from kappaflow.training.mlflow_logger import MlflowEpochLogger, log_fit_result
from kappaflow.training.module import KappaLightningModule
from kappaflow.training.target_transform import TargetTransform
from kappaflow.training.trainer import epoch_budget, fit

log = logging.getLogger(__name__)

SPLIT_ROLES = ("train", "val", "test")


#: Source trees (relative to ``src/kappaflow``) whose code decides a pretraining run's result:
#: part of its cache key (:func:`kappaflow.io_utils.code_digest`).
PRETRAIN_CODE = (*(p for p in RESULT_CODE if p != "transfer"), "stages/pretrain.py")


def run_dir(cfg: DictConfig, stage: str, run: str) -> Path:
    """Scratch directory of a training run (checkpoints, history), keyed by its content.

    Lives under ``.cache/kappaflow/`` (not a DVC output, so ``dvc repro`` does not delete it): a
    crashed run resumes from its last checkpoint, while a run with other settings, other input
    bytes (:func:`run_inputs`) or other code (:data:`PRETRAIN_CODE`, package version) starts
    fresh: the key is :func:`kappaflow.io_utils.content_key` of all three.
    """
    signature = _run_signature(cfg, stage, run)
    digest = content_key(run_inputs(cfg, stage, run), signature, PRETRAIN_CODE)
    return project_root() / ".cache" / "kappaflow" / stage / f"{run}-{digest}"


def run_inputs(cfg: DictConfig, stage: str, run: str) -> list[Path]:
    """Return every file a training run reads (the inputs of its cache key).

    The prepared dataset, its graph cache (graph models) and the prepared sets of
    ``exclude_materials_of`` (they decide which rows are excluded, hence the split).
    """
    r = cfg[stage].runs[run]
    dataset = dataset_spec(cfg, r.dataset).name
    files = [interim_dir(cfg, dataset) / "valid.parquet"]
    if input_kind(cfg.models[r.model]) == "graph":
        files.append(graph_cache_path(cfg, dataset))
    for name in cfg[stage].get("exclude_materials_of") or []:
        if name != dataset:
            files.append(interim_dir(cfg, name) / "valid.parquet")
    return files


def _run_signature(cfg: DictConfig, stage: str, run: str) -> dict[str, Any]:
    node = cfg[stage]
    r = node.runs[run]
    return {
        "run": OmegaConf.to_container(r, resolve=True),
        "model": OmegaConf.to_container(cfg.models[r.model], resolve=True),
        "trainer": OmegaConf.to_container(trainer_cfg(cfg, stage, run), resolve=True),
        "stage": {
            k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
            for k, v in node.items()
            if k not in ("runs", "trainer")
        },
        "graphs": OmegaConf.to_container(cfg.graphs, resolve=True),
    }


def run_fraction(cfg: DictConfig, run: str) -> float:
    """Share of the pretraining train split a run uses: its own ``fraction``, else the global."""
    own = cfg.pretrain.runs[run].get("fraction")
    return float(cfg.pretrain.fraction if own is None else own)


def trainer_cfg(cfg: DictConfig, stage: str, run: str) -> DictConfig:
    """``trainer`` < ``<stage>.trainer`` < ``<stage>.runs.<run>.trainer`` (later wins)."""
    node = cfg[stage]
    merged = OmegaConf.merge(
        cfg.trainer, node.get("trainer") or {}, node.runs[run].get("trainer") or {}
    )
    assert isinstance(merged, DictConfig)
    return merged


def pretrain_split(
    table: pd.DataFrame,
    excluded_ids: set[str],
    val_fraction: float,
    test_fraction: float,
    fraction: float,
    seed: int,
) -> np.ndarray:
    """Role per row: ``train``/``val``/``test`` grouped by formula, ``unused``, ``excluded``.

    The train/val/test assignment does not depend on ``fraction``: it only thins the training
    groups (seeded), so runs with different pretraining sizes share the same val and test sets.

    Args:
        table: prepared rows with ``id`` and ``formula``.
        excluded_ids: ids removed for leakage control (role ``excluded``).
        val_fraction: fraction of rows (by group) for early stopping.
        test_fraction: held-out fraction (never used for selection).
        fraction: share of the training groups actually used, in (0, 1].
        seed: split seed.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"pretrain.fraction must be in (0, 1], got {fraction}")
    roles = np.full(len(table), "excluded", dtype=object)
    keep = ~table["id"].astype(str).isin(excluded_ids).to_numpy()
    groups = material_keys(table.loc[keep], level="formula").to_numpy()
    train_frac = 1.0 - val_fraction - test_fraction
    labels = train_val_test_split(groups, (train_frac, val_fraction, test_fraction), seed=seed)
    if fraction < 1.0:
        train_groups = np.unique(groups[labels == "train"])
        rng = np.random.default_rng(seed + 7919)
        n_keep = max(1, int(round(fraction * len(train_groups))))
        chosen = set(rng.choice(train_groups, size=n_keep, replace=False).tolist())
        unused = (labels == "train") & ~np.isin(groups, list(chosen))
        labels = labels.astype(object)
        labels[unused] = "unused"
    roles[keep] = labels
    return roles


def excluded_material_ids(
    cfg: DictConfig, table: pd.DataFrame, level: str, own_dataset: str
) -> set[str]:
    """Return ids of ``table`` whose material is in a set of ``pretrain.exclude_materials_of``."""
    others = []
    for name in cfg.pretrain.exclude_materials_of or []:
        if name == own_dataset:  # e.g. SPS pretraining on ju2021_sps keeps its own rows
            continue
        others.append(load_prepared(interim_dir(cfg, name))[["id", "formula", "spacegroup"]])
    if not others:
        return set()
    _, excluded = exclude_overlapping(table, others, level=level)
    return set(excluded["id"].astype(str))


def pretrain_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return the DVC metrics of a pretraining run: numbers to compare across experiments.

    Args:
        metrics: the run's full record (``metrics/pretrain_<run>.json``).

    Returns:
        ``test_mae.<target>`` (test split, the target's raw unit: eV/atom, eV, log10 SPS...),
        ``epochs`` and ``seconds_per_epoch`` (s, median over epochs).
    """
    return {
        "test_mae": {t: m.get("mae") for t, m in (metrics.get("test") or {}).items()},
        "epochs": metrics.get("epochs_trained"),
        "seconds_per_epoch": metrics.get("seconds_per_epoch"),
    }


def evaluate_split(
    model: Any,
    transform: Any,
    inputs: Any,
    idx: np.ndarray,
    train_idx: np.ndarray,
    transforms: dict[str, str],
    batch_size: int,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], np.ndarray]:
    """Metrics of the model and of a mean predictor on rows ``idx``, per target (raw units).

    Returns:
        ``(model_metrics, baseline_metrics, predictions [len(idx), T])``. κ-like (log10)
        targets get log10-MAE etc. (:func:`regression_metrics`), others MAE/RMSE/R².
    """
    _, preds = predict(model, transform, RowsView(inputs.dataset, idx), batch_size=batch_size)
    y_all = inputs.table[inputs.target_names].to_numpy(dtype=np.float64)
    ours: dict[str, dict[str, float]] = {}
    base: dict[str, dict[str, float]] = {}
    for j, name in enumerate(inputs.target_names):
        y_true, y_pred = y_all[idx, j], preds[:, j]
        y_train = y_all[train_idx, j]
        ok, ok_train = np.isfinite(y_true), np.isfinite(y_train)
        if ok.sum() == 0 or ok_train.sum() == 0:
            continue
        tf = transforms[name]
        metric = regression_metrics if tf == "log10" else basic_metrics
        ours[name] = metric(y_true[ok], y_pred[ok])
        mean = MeanPredictor(transform=tf).fit(np.zeros((ok_train.sum(), 1)), y_train[ok_train])
        base[name] = metric(y_true[ok], mean.predict(np.zeros((ok.sum(), 1))))
    return ours, base, preds


def pretrain_stage(cfg: DictConfig, run: str) -> dict[str, Any]:
    """Run pretraining ``run`` (a key of ``pretrain.runs``) end to end; return its metrics."""
    if run not in cfg.pretrain.runs:
        raise KeyError(f"unknown pretrain run {run!r}; known: {sorted(cfg.pretrain.runs)}")
    t_start = time.perf_counter()
    spec_run = cfg.pretrain.runs[run]
    model_cfg = cfg.models[spec_run.model]
    spec = dataset_spec(cfg, spec_run.dataset)
    targets = list(spec_run.targets)
    transforms = {t: spec.target(t).transform for t in targets}
    tcfg = trainer_cfg(cfg, "pretrain", run)
    root = project_root()
    out_model = root / cfg.paths.models_dir / "pretrain" / f"{run}.pt"
    out_metrics = root / cfg.paths.metrics_dir / f"pretrain_{run}.json"
    out_plots = root / cfg.paths.plots_dir / "pretrain" / run
    out_splits = root / "data" / "splits" / f"pretrain_{run}.csv"
    work = run_dir(cfg, "pretrain", run)
    for d in (out_model.parent, out_metrics.parent, out_plots, out_splits.parent, work):
        d.mkdir(parents=True, exist_ok=True)

    prepared = interim_dir(cfg, spec.name) / "valid.parquet"
    table = load_prepared(interim_dir(cfg, spec.name))
    table = table.drop(columns=[c for c in ("lattice", "numbers", "frac_coords") if c in table])
    idx, counts = _split_rows(cfg, run, table, targets, out_splits)
    log.info(
        "plan: pretrain %s (%s) on %s: %s rows; %s",
        run,
        spec_run.model,
        spec.name,
        counts,
        epoch_budget(tcfg),
    )

    cache = graph_cache_path(cfg, spec.name) if input_kind(model_cfg) == "graph" else None
    inputs = load_model_inputs(model_cfg, table, targets, cache)

    L.seed_everything(int(tcfg.seed), workers=True)
    model = build_model(model_cfg, n_targets=len(targets))
    if inputs.features is not None:
        model.encoder.fit_input_scaler(inputs.features[idx["train"]])
    dm = GraphDataModule.from_cfg(inputs.dataset, idx["train"], idx["val"], idx["test"], tcfg)
    transform = TargetTransform.fit(dm.train_targets(), [transforms[t] for t in targets], targets)
    module = KappaLightningModule.from_cfg(model, transform, tcfg)

    units = {t: spec.target(t).unit for t in targets}
    with start_stage_run(
        cfg,
        "pretrain",
        run_name=run_label("pretrain", run),
        dvc_stage=f"pretrain@{run}",
        run_id_file=work / "mlflow_run_id",
        tags={"model": str(spec_run.model), "dataset": spec.name},
        params=["pretrain", f"models.{spec_run.model}", "trainer", f"datasets.{spec.name}", "seed"],
        drop_params=[f"pretrain.runs.{r}." for r in cfg.pretrain.runs if r != run],
        extra_params={f"n_{k}": v for k, v in counts.items()},
        system_metrics=True,
    ) as active:
        if active is not None:
            log_dataset(
                table,
                name=spec.name,
                digest=file_sha256(prepared),
                context="pretrain",
                source=str(prepared),
                targets=",".join(targets),
            )
        callbacks: list[L.Callback] = [EpochHistory(work / "history.csv")]
        if active is not None:
            callbacks.append(MlflowEpochLogger(units=units))
        t_fit = time.perf_counter()
        result = fit(tcfg, module, dm, work / "lightning", callbacks=callbacks)
        fit_seconds = time.perf_counter() - t_fit
        history = read_history(work / "history.csv")
        epoch_times = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]

        test_metrics, baseline, test_pred = evaluate_split(
            module.model,
            module.transform,
            inputs,
            idx["test"],
            idx["train"],
            transforms,
            batch_size=int(tcfg.eval_batch_size or tcfg.batch_size),
        )
        save_model(
            out_model,
            module.model,
            module.transform,
            model_cfg,
            meta={
                "stage": "pretrain",
                "run": run,
                "dataset": spec.name,
                "targets": targets,
                "counts": counts,
            },
        )

        test_true = inputs.table[targets].to_numpy(dtype=np.float64)[idx["test"]]
        _write_plots(history, test_true, test_pred, run, spec, transforms, out_plots)

        published = OmegaConf.to_container(model_cfg, resolve=True).get("published") or {}
        metrics = {
            "run": run,
            "model": str(spec_run.model),
            "dataset": spec.name,
            "targets": targets,
            "fraction": run_fraction(cfg, run),
            "counts": counts,
            "test": test_metrics,
            "baseline_mean": baseline,
            "published_for_context": published,
            "epochs_trained": len(history),
            "stopped_early": bool(result.stopped_early),
            "best_val_loss": _finite(result.best_val_loss),
            "seconds_per_epoch": float(np.median(epoch_times)) if epoch_times else None,
            "fit_seconds_this_call": fit_seconds,
            "resumed": result.resumed_from is not None,
            "device": str(next(module.model.parameters()).device),
            "wall_seconds": time.perf_counter() - t_start,
        }
        write_json(out_metrics, metrics)
        write_metrics(
            root / cfg.paths.metrics_dir / "headline" / f"pretrain_{run}.json",
            pretrain_headline(metrics),
        )
        if active is not None:
            _log_run(cfg, result, metrics, (out_metrics, out_splits, out_plots, out_model), units)
    log.info("pretrain %s: test %s | mean baseline %s", run, test_metrics, baseline)
    return metrics


def _split_rows(
    cfg: DictConfig, run: str, table: pd.DataFrame, targets: list[str], out_splits: Path
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Assign grouped train/val/test roles (written to ``out_splits``); return rows and counts.

    Rows must carry every target the run learns at least partially; a row with none is
    ``unlabeled``. Materials of ``pretrain.exclude_materials_of`` are ``excluded``.
    """
    spec_name = str(cfg.pretrain.runs[run].dataset)
    excluded = excluded_material_ids(cfg, table, str(cfg.pretrain.leakage_level), spec_name)
    roles = pretrain_split(
        table,
        excluded,
        float(cfg.pretrain.val_fraction),
        float(cfg.pretrain.test_fraction),
        run_fraction(cfg, run),
        int(cfg.pretrain.split_seed),
    )
    no_label = table[targets].isna().all(axis=1).to_numpy()
    roles = np.where(no_label & np.isin(roles, SPLIT_ROLES), "unlabeled", roles)
    pd.DataFrame({"id": table["id"], "formula": table["formula"], "role": roles}).to_csv(
        out_splits, index=False
    )
    idx = {r: np.flatnonzero(roles == r) for r in SPLIT_ROLES}
    counts = {r: int((roles == r).sum()) for r in (*SPLIT_ROLES, "unused", "excluded", "unlabeled")}
    return idx, counts


def _write_plots(
    history: list[dict[str, Any]],
    test_true: np.ndarray,
    test_pred: np.ndarray,
    run: str,
    spec: Any,
    transforms: dict[str, str],
    out_plots: Path,
) -> None:
    """Learning curve (``history.csv`` for DVC + PNG) and a parity plot per target (test split)."""
    hist_df = pd.DataFrame(history)
    keep_cols = [c for c in ("epoch", "train/loss", "val/loss") if c in hist_df]
    hist_df[keep_cols].rename(columns=lambda c: c.replace("/", "_")).to_csv(
        out_plots / "history.csv", index=False
    )
    learning_curve_plot(
        {k: hist_df[k].tolist() for k in ("train/loss", "val/loss") if k in hist_df},
        out_plots / "learning_curve.png",
        title=f"pretrain {run}",
        ylabel="MSE (standardized)",
    )
    for j, name in enumerate(transforms):
        ok = np.isfinite(test_true[:, j])
        parity_plot(
            test_true[ok, j],
            test_pred[ok, j],
            out_plots / f"parity_{name}.png",
            log=transforms[name] == "log10",
            title=f"{run}: {name} (test)",
            units=spec.target(name).unit,
            quantity=name,
        )


def split_metric_names(
    prefix: str, scores: dict[str, dict[str, Any]], units: dict[str, str | None]
) -> dict[str, float]:
    """Flatten per-target scores to MLflow metrics (``test_e_form_mae_eV_per_atom``).

    Args:
        prefix: e.g. ``test`` or ``baseline_mean_test``.
        scores: target → metric → value (:func:`evaluate_split`).
        units: target → unit (MAE / RMSE carry it in the name; log10 errors, R², ρ, MAPE % are
            unitless or say their unit already).

    Returns:
        Finite values only; counts (``n``) left out (they are params).
    """
    out: dict[str, float] = {}
    for target, values in scores.items():
        for k, v in values.items():
            if is_count(k) or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if not np.isfinite(v):
                continue
            suffix = unit_suffix(units.get(target)) if k in ("mae", "rmse") else ""
            if k == "mape":
                suffix = "pct"
            out["_".join(p for p in (prefix, target, k, suffix) if p)] = float(v)
    return out


def _log_run(
    cfg: DictConfig,
    result: Any,
    metrics: dict[str, Any],
    files: tuple,
    units: dict[str, str | None],
) -> None:
    """Log the fit, test/baseline metrics and the run's files to the active MLflow run."""
    import mlflow

    out_metrics, out_splits, out_plots, out_model = files
    log_fit_result(result, log_checkpoint=bool(cfg.tracking.log_checkpoints), units=units)
    mlflow.log_metrics(
        split_metric_names("test", metrics["test"], units)
        | split_metric_names("baseline_mean_test", metrics["baseline_mean"], units)
    )
    if metrics["seconds_per_epoch"] is not None:
        mlflow.log_metric("seconds_per_epoch", metrics["seconds_per_epoch"])
    for f in (out_metrics, out_splits, *sorted(out_plots.glob("*"))):
        log_artifact(f, "plots" if f.parent == out_plots else None)
    if cfg.tracking.log_checkpoints:
        log_artifact(out_model, "model")


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def main() -> None:
    """Run the DVC stage ``pretrain`` from the command line: ``pipelines/pretrain.py``.

    Usage: ``python pipelines/pretrain.py RUN [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`pretrain_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(pretrain_stage)
