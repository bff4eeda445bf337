"""DVC stages ``finetune`` and ``finetune_other``: one transfer strategy on one dataset.

Reads ``transfer.strategies.<strategy>``, ``evaluation``, ``models``, ``trainer``, ``seed`` and
the dataset card; runs the repeated grouped k-fold
(:func:`kappaflow.evaluation.protocol.cross_validate`) with the strategy's per-fold fit/predict
(:func:`kappaflow.transfer.fit_predict.build_fit_predict`; models learn log10 κ, κ in W/m/K).

Outputs, per strategy × dataset (``models/finetune/<strategy>/<dataset>/``): ``cv.json`` (per-fold
and mean ± std metrics), ``predictions.csv`` (out-of-fold κ) and, for strategies trained by
gradient descent, ``folds/repeat<r>-fold<f>.pt``: every fold's model as a one-file export
(:func:`kappaflow.training.export.save_model`; the k-fold ensemble the registry serves, its
held-out error being exactly this stage's CV error). A crashed stage resumes from the fold cache
(:func:`kappaflow.transfer.fit_predict.fold_cache_dir`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.evaluation.protocol import cross_validate, dataset_evaluation, protocol_settings
from kappaflow.io_utils import write_json
from kappaflow.layout import interim_dir, kappa_table, project_root
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.runs import file_sha256, log_artifact, log_dataset
from kappaflow.transfer.fit_predict import (
    build_fit_predict,
    fold_cache_dir,
    strategy_node,
    with_strategy,
)
from kappaflow.transfer.strategies import stage_plan

log = logging.getLogger(__name__)


def finetune_stage(cfg: DictConfig, strategy: str, dataset: str) -> dict[str, Any]:
    """Cross-validate transfer ``strategy`` on κ dataset ``dataset``; write its CV results."""
    if strategy not in cfg.transfer.strategies:  # e.g. finetune_other after `transfer=freeze`
        cfg = with_strategy(cfg, strategy)
    s_cfg = strategy_node(cfg, strategy)
    root = project_root()
    out = root / cfg.paths.models_dir / "finetune" / strategy / dataset
    out.mkdir(parents=True, exist_ok=True)
    work = fold_cache_dir(cfg, strategy, dataset)

    # two_stage: the earlier stages run once, on their sets minus every material of `dataset`.
    plan = stage_plan(s_cfg, target_dataset=dataset) if s_cfg.name == "two_stage" else []
    if any(st.dataset == dataset for st in plan[:-1]):
        reason = f"{dataset} is an earlier stage's dataset of two_stage: nothing left to chain"
        log.warning("finetune %s on %s skipped: %s", strategy, dataset, reason)
        pd.DataFrame(columns=["id", "repeat", "fold", "kappa_true", "kappa_pred"]).to_csv(
            out / "predictions.csv", index=False
        )
        skipped = {"strategy": strategy, "dataset": dataset, "skipped": reason}
        write_json(out / "cv.json", skipped)
        return skipped
    table, _ = kappa_table(cfg, dataset)
    prepared = interim_dir(cfg, dataset) / "valid.parquet"
    with start_stage_run(
        cfg,
        "finetune",
        run_name=f"finetune/{strategy}/{dataset}",
        dvc_stage=f"finetune@{strategy}-{dataset}",
        run_id_file=work / "mlflow_run_id",
        tags={"strategy": strategy, "dataset": dataset},
    ) as active:
        if active is not None:
            log_dataset(
                table,
                name=dataset,
                digest=file_sha256(prepared),
                context="finetune",
                source=str(prepared),
                targets="kappa",
            )
        fit_predict = build_fit_predict(cfg, strategy, dataset, table, work, out / "folds")
        result = cross_validate(
            table,
            fit_predict,
            **protocol_settings(dataset_evaluation(cfg.evaluation, dataset)),
            progress=True,
        )
        summary = {"strategy": strategy, "dataset": dataset, **result.to_dict()}
        if active is not None:
            summary["mlflow_run_id"] = active.info.run_id
        write_json(out / "cv.json", summary)
        result.predictions.to_csv(out / "predictions.csv", index=False)
        if active is not None:
            _log_folds(result)
            log_artifact(out / "cv.json")
            log_artifact(out / "predictions.csv")
    log.info(
        "finetune %s on %s: %s",
        strategy,
        dataset,
        {k: round(v, 4) for k, v in result.summary.items() if isinstance(v, float)},
    )
    return summary


def _log_folds(result: Any) -> None:
    """Mean ± std as parent metrics, one nested child run per fold."""
    import mlflow

    mlflow.log_metrics(
        {
            k: float(v)
            for k, v in result.summary.items()
            if isinstance(v, int | float) and np.isfinite(v)
        }
    )
    for f in result.folds:
        with mlflow.start_run(run_name=f"repeat{f['repeat']}-fold{f['fold']}", nested=True):
            mlflow.log_params({k: f[k] for k in ("repeat", "fold", "n_train", "n_val", "n_test")})
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in f["metrics"].items()
                    if isinstance(v, int | float) and np.isfinite(v)
                }
            )


def main() -> None:
    """Run the DVC stages ``finetune`` and ``finetune_other``: ``pipelines/finetune.py``.

    Usage: ``python pipelines/finetune.py STRATEGY DATASET [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`finetune_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(finetune_stage)
