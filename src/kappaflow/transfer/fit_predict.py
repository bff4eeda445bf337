"""One transfer strategy as a per-fold ``fit_predict`` callback (the heart of ``finetune``).

For every fold of the repeated grouped k-fold (:func:`kappaflow.evaluation.protocol.cross_validate`)
a fresh model is prepared by the strategy (:func:`kappaflow.transfer.strategies.prepare_model`),
trained on the fold's training rows with early stopping on its inner validation rows, and asked
for κ (W/m/K) on the test rows only. Models learn log10 κ.

``two_stage`` (ParAIsite III) first fine-tunes on the low-fidelity set(s) of its plan, with every
material of the evaluated κ set removed from them (so no fold's test material is ever trained on),
once per (strategy, dataset); each fold then continues from that model.

Fold checkpoints and finished fold predictions live under ``.cache/kappaflow/finetune/`` (see
:func:`fold_cache_dir`) so a crashed stage resumes where it stopped. Both the folder and every
fold file are keyed by content (:func:`kappaflow.io_utils.content_key`): the bytes of every input
file (:func:`fold_inputs`: pretrained encoder, prepared datasets, graph caches), the recipe's
config, the package version and source (:data:`kappaflow.io_utils.RESULT_CODE`), plus the rows
of the fold; a new encoder, dataset or code never reuses an old fold. A finished fold whose files
do not load is deleted and recomputed (logged warning). Used by the ``finetune``,
``extrapolate`` and ``pretrain_size`` stages and by sweeps.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.config import compose
from kappaflow.data.leakage import exclude_overlapping, material_keys
from kappaflow.data.splits import inner_validation_split
from kappaflow.evaluation.protocol import dataset_evaluation, protocol_settings
from kappaflow.io_utils import (
    RESULT_CODE,
    CorruptFileError,
    atomic_write,
    content_key,
    verify_zip,
)
from kappaflow.layout import (
    graph_cache_path,
    interim_dir,
    kappa_table,
    project_root,
    target_name,
    with_structures,
)
from kappaflow.models.factory import encoder_class
from kappaflow.training.datamodule import GraphDataModule
from kappaflow.training.export import predict, save_model
from kappaflow.training.inputs import ModelInputs, RowsView, input_kind, load_model_inputs
from kappaflow.training.mlflow_logger import MlflowEpochLogger
from kappaflow.training.module import KappaLightningModule
from kappaflow.training.target_transform import TargetTransform
from kappaflow.training.trainer import epoch_budget, fit
from kappaflow.transfer.stacking import StackedRegressor, element_count_matrix, uses_stacking
from kappaflow.transfer.strategies import (
    EmbeddingRegressor,
    apply_stage,
    extract_embeddings,
    needs_input_scaler,
    prepare_model,
    pretrained_model_path,
    regressor_name,
    stage_plan,
    uses_sklearn_regressor,
)

log = logging.getLogger(__name__)


def strategy_node(cfg: DictConfig, strategy: str) -> DictConfig:
    """Return ``transfer.strategies.<strategy>`` (``KeyError`` lists the configured ones)."""
    if strategy not in cfg.transfer.strategies:
        known = sorted(cfg.transfer.strategies)
        raise KeyError(f"unknown transfer strategy {strategy!r}; configured: {known}")
    return cfg.transfer.strategies[strategy]


def with_strategy(cfg: DictConfig, strategy: str, **changes: Any) -> DictConfig:
    """Return a copy of ``cfg`` whose ``transfer.strategies`` has ``strategy`` (with ``changes``).

    A strategy missing from the composed ``transfer`` group (e.g. after ``transfer=freeze``) is
    composed from ``conf/transfer/<strategy>.yaml``, so studies that need a given recipe
    (extrapolation, pretraining size) run whatever strategies the main table uses.

    Raises:
        KeyError: no such strategy file in ``conf/transfer``.
    """
    out = copy.deepcopy(cfg)
    if strategy not in out.transfer.strategies:
        try:
            node = compose([f"transfer={strategy}"]).transfer.strategies[strategy]
        except Exception as err:  # hydra raises its own MissingConfigException
            raise KeyError(f"unknown transfer strategy {strategy!r} (conf/transfer)") from err
        OmegaConf.set_struct(out, False)
        out.transfer.strategies[strategy] = node
    for key, value in changes.items():
        out.transfer.strategies[strategy][key] = value
    return out


def _train(
    model: Any,
    inputs: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    tcfg: DictConfig,
    out_dir: Path,
    log_curves: bool = False,
) -> Any:
    """Fit ``model`` on rows ``train_idx`` (early stopping on ``val_idx``); return the module.

    With ``log_curves``, the per-epoch ``train_loss``, ``val_loss``, ``val_log10_mae``… go to
    the active MLflow run (:class:`~kappaflow.training.mlflow_logger.MlflowEpochLogger`).
    """
    dm = GraphDataModule.from_cfg(inputs.dataset, train_idx, val_idx, None, tcfg)
    transform = TargetTransform.fit(dm.train_targets(), ["log10"], ["kappa"])
    module = KappaLightningModule.from_cfg(model, transform, tcfg)
    callbacks = [MlflowEpochLogger()] if log_curves else None
    fit(tcfg, module, dm, out_dir, test=False, callbacks=callbacks)
    return module


def _predict(module: Any, inputs: Any, idx: np.ndarray, batch_size: int) -> np.ndarray:

    _, preds = predict(module.model, module.transform, RowsView(inputs.dataset, idx), batch_size)
    return preds[:, 0]


FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def build_fit_predict(
    cfg: DictConfig,
    strategy: str,
    dataset: str,
    table: pd.DataFrame,
    work: Path,
    export_dir: Path | None = None,
    *,
    log_curves: bool = False,
) -> FitPredict:
    """Return the ``fit_predict(train_idx, val_idx, test_idx) -> κ_pred`` of one strategy.

    The callback :func:`kappaflow.evaluation.protocol.cross_validate` calls once per fold: a
    fresh model prepared by the strategy, trained on ``train_idx`` with early stopping on
    ``val_idx``, predicting κ (W/m/K) for ``test_idx`` only. Used by the ``finetune`` stage and
    by sweeps (on the inner folds of a training part).

    Args:
        cfg: the composed config.
        strategy: key of ``transfer.strategies``.
        dataset: the κ dataset ``table`` comes from (two_stage removes its materials from the
            earlier stages' sets).
        table: rows of ``dataset`` (``id, formula, spacegroup, kappa``), possibly a subset.
        work: cache directory: finished folds (``fold-<key>.npy`` / ``.pt``) are reused, so a
            crashed run resumes; key = hash of the recipe's content key (input files, config,
            code: as :func:`fold_cache_dir`), ``table``'s ids and κ, and the fold's train,
            validation and test rows. A finished fold that does not load (truncated, wrong
            length, non-finite, bad zip CRC) is deleted and recomputed with a warning.
        export_dir: where to copy each fold's exported model as ``repeat<r>-fold<f>.pt`` (folds
            numbered in call order, ``n_splits`` per repeat); None: no copies. A scikit-learn
            head (``features`` with ``ridge``/``random_forest``) is exported as the frozen
            encoder plus the regressor as plain arrays
            (:meth:`~kappaflow.transfer.strategies.EmbeddingRegressor.to_head`), predicting the
            same κ as the in-fold regressor.
        log_curves: log every trained model's per-epoch curves to the MLflow run active while
            it trains (the ``finetune`` stage opens one child run per fold; two_stage's earlier
            stages train in the strategy run).
    """
    s_cfg = strategy_node(cfg, strategy)
    model_cfg = cfg.models[s_cfg.model]
    ev = dataset_evaluation(cfg.evaluation, dataset)
    seed = int(cfg.seed)
    root = project_root()
    work.mkdir(parents=True, exist_ok=True)
    plan = stage_plan(s_cfg, target_dataset=dataset) if s_cfg.name == "two_stage" else []
    inputs = _model_inputs(cfg, model_cfg, dataset, table)
    base_trainer = fold_trainer_cfg(cfg, {}, ev)
    pretrained = (
        pretrained_model_path(root / cfg.paths.models_dir, s_cfg.pretrained)
        if s_cfg.get("pretrained")
        else None
    )
    batch = int(base_trainer.get("eval_batch_size") or base_trainer.batch_size)
    n_splits = int(protocol_settings(ev)["n_splits"])
    sklearn_head = uses_sklearn_regressor(s_cfg)
    stacked = uses_stacking(s_cfg)
    if stacked and input_kind(model_cfg) == "composition":
        raise ValueError(
            f"strategy {strategy!r} stacks on the crystal graph's composition: its model "
            f"{s_cfg.model!r} must read structures (cgcnn, megnet, sevennet)"
        )
    groups = material_keys(table, ev.get("group_level", "formula")).to_numpy()  # as the folds
    if export_dir is not None and export_dir.exists():
        shutil.rmtree(export_dir)
    fold_no = iter(range(10**9))
    run_key = _run_key(cfg, s_cfg, dataset, table)
    start_model = (
        _run_earlier_stages(
            cfg, s_cfg, model_cfg, plan, table, pretrained, work, ev, run_key, log_curves
        )
        if plan
        else None
    )

    frozen: dict[str, np.ndarray] = {}

    def frozen_inputs(model: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings of every row (and element counts when stacking), computed once.

        The sklearn-head strategies freeze the pretrained encoder, which every fold copies
        unchanged: its embeddings are the same in every fold, so the first fold's are reused.
        """
        if "emb" not in frozen:
            every = RowsView(inputs.dataset, np.arange(len(table)))
            frozen["emb"] = extract_embeddings(model, every, batch)
            if stacked:
                frozen["counts"] = element_count_matrix(every, batch)
        return frozen["emb"], frozen.get("counts")

    def export(exported: Path, name: str) -> None:
        if export_dir is not None:
            export_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(exported, export_dir / name)

    def fit_predict(train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        key = _fold_key(run_key, train_idx, val_idx, test_idx)
        done = work / f"fold-{key}.npy"
        exported = work / f"fold-{key}.pt"
        k = next(fold_no)
        name = f"repeat{k // n_splits}-fold{k % n_splits}.pt"
        finished = _load_finished(done, exported, len(test_idx))
        if finished is not None:  # finished before a crash (or by an identical recipe)
            export(exported, name)
            return finished
        L.seed_everything(seed, workers=True)
        if plan:
            model = copy.deepcopy(start_model)
            model, over = apply_stage(model, plan[-1], 1)
        else:
            model, over = prepare_model(s_cfg, model_cfg, pretrained, 1)
            if inputs.features is not None and needs_input_scaler(s_cfg):
                model.encoder.fit_input_scaler(inputs.features[train_idx])
        meta = {"strategy": strategy, "dataset": dataset, "fold": name[:-3], "seed": seed}
        if stacked:
            emb, counts = frozen_inputs(model)
            assert counts is not None
            # the rows the baselines fit on (protocol: train_idx; val_idx is for early stopping)
            rows = np.asarray(train_idx)
            stack = StackedRegressor.from_cfg(s_cfg, seed).fit(
                emb[rows], counts[rows], table["kappa"].to_numpy()[rows], groups[rows]
            )
            pred = stack.predict(emb[test_idx], counts[test_idx])
            model.head = stack.to_head()
            transform = TargetTransform(["log10"], ["kappa"])
            save_model(exported, model, transform, model_cfg, meta | {"stack": stack.describe()})
        elif sklearn_head:
            emb, _ = frozen_inputs(model)
            reg = EmbeddingRegressor.from_cfg(s_cfg, seed)
            reg.fit(emb[train_idx], table["kappa"].to_numpy()[train_idx])
            pred = reg.predict(emb[test_idx])
            # frozen encoder + the regressor as arrays; identity standardization: log10 κ out
            model.head = reg.to_head()
            transform = TargetTransform([reg.transform], ["kappa"])
            save_model(exported, model, transform, model_cfg, meta | {"regressor": reg.name})
        else:
            tcfg = fold_trainer_cfg(cfg, over, ev)
            module = _train(
                model, inputs, train_idx, val_idx, tcfg, work / f"fold-{key}", log_curves
            )
            pred = _predict(module, inputs, test_idx, batch)
            save_model(exported, module.model, module.transform, model_cfg, meta)
        export(exported, name)
        atomic_write(done, lambda tmp: _save_npy(tmp, pred))
        return pred

    return fit_predict


def fold_work(cfg: DictConfig, strategy: str, dataset: str) -> str:
    """Say in words what one fold of ``strategy`` on ``dataset`` trains (for the stage's plan).

    A scikit-learn or stacked head on frozen embeddings trains no epochs; otherwise the fold's
    trainer (``trainer`` < the strategy's ``trainer`` < ``evaluation.trainer``) bounds the epochs
    (two_stage trains its earlier stages once per recipe, before the folds).
    """
    s_cfg = strategy_node(cfg, strategy)
    if uses_stacking(s_cfg):
        return f"{regressor_name(s_cfg)} + extra trees on frozen {s_cfg.model} embeddings, blended"
    if uses_sklearn_regressor(s_cfg):
        return f"{regressor_name(s_cfg)} on frozen {s_cfg.model} embeddings (no epochs)"
    ev = dataset_evaluation(cfg.evaluation, dataset)
    tcfg = fold_trainer_cfg(cfg, dict(s_cfg.get("trainer") or {}), ev)
    return f"{s_cfg.model}, {epoch_budget(tcfg)}"


def fold_trainer_cfg(
    cfg: DictConfig, overrides: dict[str, Any], evaluation: DictConfig | None = None
) -> DictConfig:
    """Return the trainer of one fit: ``trainer`` < strategy overrides < ``evaluation.trainer``.

    ``evaluation.trainer`` (empty by default) is applied last to every fine-tuning fit, e.g. to
    cap epochs in a smoke run. ``evaluation``: the node of one dataset
    (:func:`kappaflow.evaluation.protocol.dataset_evaluation`); default ``cfg.evaluation``.
    """
    ev = cfg.evaluation if evaluation is None else evaluation
    merged = OmegaConf.merge(cfg.trainer, overrides, ev.get("trainer") or {})
    assert isinstance(merged, DictConfig)
    return merged


def _run_earlier_stages(
    cfg: DictConfig,
    s_cfg: DictConfig,
    model_cfg: DictConfig,
    plan: list,
    target: pd.DataFrame,
    pretrained: Path | None,
    work: Path,
    evaluation: DictConfig,
    run_key: str,
    log_curves: bool = False,
) -> Any:
    """Train the stages before the last one (e.g. AGL κ) on sets without ``target``'s materials.

    Each stage trains in ``work/stage<k>-<dataset>-<run_key>`` (resumable; ``run_key`` as
    :func:`_run_key`, so other inputs never resume a stale stage).
    """
    L.seed_everything(int(cfg.seed), workers=True)
    model, over = prepare_model(s_cfg, model_cfg, pretrained, 1)
    for k, stage in enumerate(plan[:-1]):
        if k > 0:
            model, over = apply_stage(model, stage, 1)
        table, _ = kappa_table(cfg, stage.dataset)
        kept, removed = exclude_overlapping(table, [target], level="formula")
        kept = kept.reset_index(drop=True)
        log.info(
            "two_stage stage %d on %s: %d rows (%d removed: materials of the evaluated set)",
            k,
            stage.dataset,
            len(kept),
            len(removed),
        )
        inputs = _model_inputs(cfg, model_cfg, stage.dataset, kept)
        tr, va = inner_validation_split(
            np.arange(len(kept)),
            material_keys(kept).to_numpy(),
            float(evaluation.val_fraction),
            int(cfg.seed),
        )
        tcfg = fold_trainer_cfg(cfg, over, evaluation)
        stage_dir = work / f"stage{k}-{stage.dataset}-{run_key}"
        module = _train(model, inputs, tr, va, tcfg, stage_dir, log_curves)
        model = module.model
    return model


def fold_cache_dir(cfg: DictConfig, strategy: str, dataset: str) -> Path:
    """``.cache/kappaflow/finetune/<strategy>-<dataset>-<key>``: finished folds of one recipe.

    ``key`` is :func:`kappaflow.io_utils.content_key` of the files the recipe reads
    (:func:`fold_inputs`: pretrained encoder weights, prepared dataset bytes, graph caches, and
    those of two_stage's earlier-stage sets), its config (strategy node, model card, trainer,
    evaluation settings, seed) and the code (package version + sha256 of
    :data:`kappaflow.io_utils.RESULT_CODE`). Any study that runs the same recipe on the same
    inputs (pretraining size at 100 %, say) reuses the folds the ``finetune`` stage trained;
    replacing ``models/pretrain/<run>.pt`` (``-S pretrain.fraction=…``) gives a new folder.
    """
    s_cfg = strategy_node(cfg, strategy)
    name = f"{strategy}-{dataset}-{_digest(cfg, s_cfg, dataset)}"
    return project_root() / ".cache" / "kappaflow" / "finetune" / name


def fold_inputs(cfg: DictConfig, strategy: str, dataset: str) -> list[Path]:
    """Return every file a recipe's folds read (the file part of their cache key).

    The pretrained export ``models/pretrain/<run>.pt`` (if the strategy names one), then per
    dataset (``dataset`` and, for two_stage, its earlier stages' sets) the prepared
    ``data/interim/<name>/valid.parquet`` and, for graph models, ``data/graphs/<name>.pt``.
    Files that do not exist are listed too (they count as absent in the key).
    """
    return _inputs(cfg, strategy_node(cfg, strategy), dataset)


def _model_inputs(
    cfg: DictConfig, model_cfg: DictConfig, dataset: str, table: pd.DataFrame
) -> ModelInputs:
    """Return the inputs of ``model_cfg`` for ``table`` (rows of ``dataset``).

    The graph cache, the Magpie vectors, or atom graphs built from the prepared structures.
    """
    kind = input_kind(model_cfg)
    cache = graph_cache_path(cfg, dataset) if kind == "graph" else None
    rows = with_structures(cfg, dataset, table) if kind == "atoms" else table
    inputs = load_model_inputs(model_cfg, rows, [target_name(cfg, dataset)], cache)
    inputs.table = table.reset_index(drop=True)
    return inputs


def _inputs(cfg: DictConfig, s_cfg: DictConfig, dataset: str) -> list[Path]:

    root = project_root()
    files: list[Path] = []
    if s_cfg.get("pretrained"):
        files.append(pretrained_model_path(root / cfg.paths.models_dir, s_cfg.pretrained))
    names = [dataset]
    if s_cfg.name == "two_stage":
        names += [st.dataset for st in stage_plan(s_cfg, target_dataset=dataset)[:-1]]
    model_cfg = cfg.models[s_cfg.model]
    files += encoder_class(model_cfg).weight_files(model_cfg)  # weights that ship in a package
    graph = input_kind(model_cfg) == "graph"
    for name in names:
        files.append(interim_dir(cfg, name) / "valid.parquet")
        if graph:
            files.append(graph_cache_path(cfg, name))
    return files


def _run_key(cfg: DictConfig, s_cfg: DictConfig, dataset: str, table: pd.DataFrame) -> str:
    """Content key of one ``build_fit_predict`` call: the recipe's (:func:`_digest`) + ``table``."""
    rows = pd.util.hash_pandas_object(table[["id", "kappa"]], index=False).to_numpy()
    h = hashlib.sha256(_digest(cfg, s_cfg, dataset).encode() + b"|" + rows.tobytes())
    return h.hexdigest()[:16]


def _fold_key(
    run_key: str, train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray
) -> str:

    h = hashlib.sha256(run_key.encode())
    for idx in (train_idx, val_idx, test_idx):
        h.update(b"|" + np.asarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _load_finished(done: Path, exported: Path | None, n_test: int) -> np.ndarray | None:
    """Predictions of a finished fold, or None (not finished, or unusable: deleted, warned).

    Usable: ``done`` loads as a finite float vector of ``n_test`` κ values (W/m/K) and
    ``exported`` (None: not checked) is a complete zip archive whose CRC-32s match.
    """
    if not done.is_file() or (exported is not None and not exported.is_file()):
        return None
    try:
        pred = np.load(done, allow_pickle=False)
        if pred.shape != (n_test,) or not np.isfinite(pred).all():
            raise ValueError(f"shape {pred.shape} / non-finite values, expected {n_test} κ values")
        if exported is not None:
            verify_zip(exported)
    except (ValueError, OSError, EOFError, CorruptFileError) as err:
        log.warning("fold cache %s unusable (%s): deleted, recomputing the fold", done, err)
        done.unlink(missing_ok=True)
        if exported is not None:
            exported.unlink(missing_ok=True)
        return None
    return pred


def _save_npy(path: Path, values: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (``np.save`` on a name appends ``.npy`` otherwise)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(values))


def _digest(cfg: DictConfig, s_cfg: DictConfig, dataset: str) -> str:

    ev = dataset_evaluation(cfg.evaluation, dataset)
    sig = {
        "strategy": OmegaConf.to_container(s_cfg, resolve=True),
        "model": OmegaConf.to_container(cfg.models[s_cfg.model], resolve=True),
        "trainer": OmegaConf.to_container(fold_trainer_cfg(cfg, {}, ev), resolve=True),
        "protocol": protocol_settings(ev),
        "seed": cfg.seed,
    }
    return content_key(_inputs(cfg, s_cfg, dataset), sig, RESULT_CODE)
