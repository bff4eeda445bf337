"""DVC stages ``finetune`` and ``finetune_other``: one transfer strategy on one dataset.

Reads ``transfer.strategies.<strategy>``, ``evaluation``, ``models``, ``trainer``, ``seed`` and
the dataset card; runs the repeated grouped k-fold
(:func:`kappaflow.evaluation.protocol.cross_validate`) with the strategy's per-fold fit/predict
(:func:`kappaflow.transfer.fit_predict.build_fit_predict`; models learn log10 κ, κ in W/m/K).

Outputs, per strategy × dataset (``models/finetune/<strategy>/<dataset>/``): ``cv.json`` (per-fold
and mean ± std metrics of the test folds; ``selection``: the same on each fold's validation rows,
by which ``register`` compares strategies), ``predictions.csv`` (out-of-fold κ) and
``folds/repeat<r>-fold<f>.pt``: every fold's model as a one-file export
(:func:`kappaflow.training.export.save_model`; for ``features`` with a scikit-learn head, the
frozen encoder + the regressor as arrays), the k-fold ensemble the registry serves, its held-out
error being exactly this stage's CV error. A crashed stage resumes from the fold cache
(:func:`kappaflow.transfer.fit_predict.fold_cache_dir`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.config import flatten
from kappaflow.evaluation.protocol import cross_validate, dataset_evaluation, protocol_settings
from kappaflow.io_utils import write_json
from kappaflow.layout import interim_dir, kappa_table, project_root
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias, finite_metrics, is_count, run_label
from kappaflow.tracking.runs import file_sha256, log_artifact, log_dataset, log_params
from kappaflow.transfer.fit_predict import (
    build_fit_predict,
    fold_cache_dir,
    fold_work,
    strategy_node,
    with_strategy,
)
from kappaflow.transfer.strategies import stage_plan

log = logging.getLogger(__name__)

#: Protocol keys of ``evaluation`` (after ``per_dataset``) logged as the run's params.
PROTOCOL_KEYS = ("n_splits", "n_repeats", "val_fraction", "seed", "group_level", "max_folds")


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
    protocol = dataset_evaluation(cfg.evaluation, dataset)
    alias = dataset_alias(dataset, cfg.tracking.get("aliases"))
    with start_stage_run(
        cfg,
        "finetune",
        run_name=run_label("finetune", alias, strategy),
        dvc_stage=f"finetune@{strategy}-{dataset}",
        run_id_file=work / "mlflow_run_id",
        tags={"strategy": strategy, "dataset": dataset, "dataset_alias": alias},
        params=[f"transfer.strategies.{strategy}", f"models.{s_cfg.model}", "trainer", "seed"],
        extra_params={
            **{
                f"evaluation.{k}": v
                for k, v in flatten(protocol).items()
                if k in PROTOCOL_KEYS or k.startswith("trainer.")
            },
            "n_rows": len(table),
        },
        system_metrics=True,
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
        fit_predict = build_fit_predict(
            cfg, strategy, dataset, table, work, out / "folds", log_curves=active is not None
        )
        folds = FoldRuns(fit_predict, alias, strategy) if active is not None else None
        settings = protocol_settings(protocol)
        n_folds = settings["n_splits"] * settings["n_repeats"]
        log.info(
            "plan: finetune %s on %s: %d rows, %d folds (%d splits x %d repeats%s); per fold: %s",
            strategy,
            dataset,
            len(table),
            min(n_folds, settings["max_folds"] or n_folds),
            settings["n_splits"],
            settings["n_repeats"],
            f", first {settings['max_folds']}" if settings["max_folds"] else "",
            fold_work(cfg, strategy, dataset),
        )
        # validation rows scored too: the register stage chooses among strategies by them
        result = cross_validate(
            table, folds or fit_predict, **settings, progress=True, score_val=True
        )
        summary = {"strategy": strategy, "dataset": dataset, **result.to_dict()}
        if active is not None:
            summary["mlflow_run_id"] = active.info.run_id
        write_json(out / "cv.json", summary)
        result.predictions.to_csv(out / "predictions.csv", index=False)
        if active is not None:
            _log_folds(result, folds)
            log_artifact(out / "cv.json")
            log_artifact(out / "predictions.csv")
    log.info(
        "finetune %s on %s: %s",
        strategy,
        dataset,
        {k: round(v, 4) for k, v in result.summary.items() if isinstance(v, float)},
    )
    return summary


class FoldRuns:
    """A ``fit_predict`` that trains each fold inside a child run of the active strategy run.

    The child run (``fold·D2·freeze·3``, later renamed ``…·r0f3``) receives the fold model's
    learning curves while it trains; :func:`_log_folds` adds its test metrics afterwards.

    Args:
        fit_predict: the strategy's per-fold callback.
        alias: short dataset name.
        strategy: strategy name.
    """

    def __init__(self, fit_predict: Any, alias: str, strategy: str) -> None:
        self.fit_predict = fit_predict
        self.alias, self.strategy = alias, strategy
        self.run_ids: list[str] = []

    def __call__(self, train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray) -> Any:
        """Open the fold's child run, train and predict in it."""
        import mlflow

        k = len(self.run_ids)
        name = run_label("fold", self.alias, self.strategy, k)
        with mlflow.start_run(run_name=name, nested=True, tags={"fold_index": str(k)}) as run:
            self.run_ids.append(run.info.run_id)
            return self.fit_predict(train_idx, val_idx, test_idx)


def _log_folds(result: Any, folds: FoldRuns | None) -> None:
    """Mean ± std on the strategy run (counts as params); test metrics on each fold's run."""
    import mlflow
    from mlflow.entities import Metric, Param

    mlflow.log_metrics(finite_metrics(result.summary | result.selection))
    log_params({k: v for k, v in result.summary.items() if is_count(k)})
    client = mlflow.MlflowClient()
    for i, f in enumerate(result.folds):
        if folds is None or i >= len(folds.run_ids):
            break
        run_id = folds.run_ids[i]
        name = run_label("fold", folds.alias, folds.strategy, f"r{f['repeat']}f{f['fold']}")
        client.update_run(run_id, name=name)
        client.log_batch(
            run_id,
            params=[Param(k, str(f[k])) for k in ("repeat", "fold", "n_train", "n_val", "n_test")],
            metrics=[
                Metric(k, v, int(time.time() * 1000), 0)
                for k, v in finite_metrics(f["metrics"], prefix="test_").items()
            ],
        )


def main() -> None:
    """Run the DVC stages ``finetune`` and ``finetune_other``: ``pipelines/finetune.py``.

    Usage: ``python pipelines/finetune.py STRATEGY DATASET [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`finetune_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(finetune_stage)
