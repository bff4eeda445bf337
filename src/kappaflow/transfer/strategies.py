"""Transfer-learning strategies: turn (strategy, model card, pretrained export) into a model.

A *strategy* (``conf/transfer/<name>.yaml``) says how a pretrained encoder
(``models/pretrain/<run>.pt``, written by the ``pretrain`` stage) is reused for lattice thermal
conductivity κ (W/m/K; every model learns standardized log10 κ):

* ``scratch``   -- same architecture, random initialisation (the baseline).
* ``finetune``  -- pretrained encoder, new head, every weight trained; the encoder learning
  rate is ``lr * encoder_lr_mult`` (TL-CGCNN, Lee & Asahi 2021).
* ``freeze``    -- pretrained encoder frozen except its last ``unfreeze_last_k`` blocks (and
  readout when ``k > 0``); batch-norm statistics of the frozen part do not move.
* ``features``  -- frozen pretrained embeddings fed to a small regressor (Ju et al. 2021):
  ``ridge`` / ``random_forest`` (scikit-learn on :func:`extract_embeddings`, fitted on log10 κ)
  or ``mlp_head`` (the model's own head trained by the usual fit with the encoder frozen).
* ``two_stage`` -- a chain of fine-tunings read from config (ParAIsite, Klochko et al.):
  pretrained -> dataset A (e.g. AFLOW AGL κ) -> dataset B (high-quality κ);
  :func:`prepare_model` prepares stage 0, :func:`apply_stage` carries the encoder on. The
  encoder is the strategy's ``model`` card: ``conf/transfer/two_stage.yaml`` is the paper's
  MEGNet pretrained on MP formation energy + band gap, ``two_stage_cgcnn.yaml`` the same chain
  on CGCNN.

A strategy's ``pretrained`` run (a key of ``pretrain.runs``) is composed into ``pretrain.runs``
by its config file (``conf/pretrain/runs/<run>.yaml`` in its defaults list), so the ``pretrain``
stage trains only the runs of the selected strategies and studies.

Everything here is library code; training uses :func:`kappaflow.training.trainer.fit` with the
trainer config merged with the returned overrides (:func:`merge_trainer_cfg`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from kappaflow.config import to_plain
from kappaflow.evaluation.baselines import FOREST_N_JOBS
from kappaflow.models.base import KappaModel
from kappaflow.models.sklearn_head import ForestHead, RidgeHead, SklearnHead
from kappaflow.training.defaults import OPTIM_DEFAULTS

log = logging.getLogger(__name__)

STRATEGIES = ("scratch", "finetune", "freeze", "features", "two_stage")
#: Strategies allowed for one stage of ``two_stage``.
STAGE_STRATEGIES = ("finetune", "freeze")
REGRESSORS = ("ridge", "random_forest", "mlp_head")
#: Regressors fitted with scikit-learn on extracted embeddings (no Lightning fit).
SKLEARN_REGRESSORS = ("ridge", "random_forest")
#: Model-card keys that describe only the head (free to differ from the pretrained card).
HEAD_KEYS = frozenset({"n_h", "head_hidden", "head_dropout", "head_activation"})
#: Model-card keys that are documentation only (never compared).
DOC_KEYS = frozenset({"description", "published"})
DEFAULT_RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


class PreparedModel(NamedTuple):
    """Result of :func:`prepare_model` / :func:`apply_stage` (unpacks as a 2-tuple).

    Attributes:
        model: the ready :class:`~kappaflow.models.base.KappaModel` (predicts standardized
            log10 κ, κ in W/m/K).
        trainer_overrides: nested overrides of the ``trainer`` config node (e.g.
            ``{"max_epochs": 200, "optim": {"encoder_lr_mult": 0.1}}``) for this strategy or
            stage; merge with :func:`merge_trainer_cfg`.
    """

    model: KappaModel
    trainer_overrides: dict[str, Any]


@dataclass(frozen=True)
class StageSpec:
    """One stage of a ``two_stage`` chain.

    Attributes:
        index: position in the chain (0 = first fine-tuning after pretraining).
        dataset: dataset card name (a key of ``datasets``), e.g. ``aflow_agl``.
        strategy: ``finetune`` or ``freeze``.
        encoder_lr_mult: encoder lr = ``lr * encoder_lr_mult`` (``finetune``; ``freeze`` with
            ``unfreeze_last_k > 0``).
        unfreeze_last_k: trailing encoder blocks left trainable (``freeze``).
        reinit_head: start the stage with a fresh head (always done when the number of
            targets changes).
        targets: target names of the stage (None: the dataset's κ target, chosen by the caller).
        trainer: trainer overrides of the stage (strategy ``trainer`` < stage ``trainer``).
    """

    index: int
    dataset: str
    strategy: str = "finetune"
    encoder_lr_mult: float = OPTIM_DEFAULTS["encoder_lr_mult"]
    unfreeze_last_k: int = 0
    reinit_head: bool = False
    targets: tuple[str, ...] | None = None
    trainer: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- helpers
def _deep_merge(*dicts: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, later arguments win."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
                out[k] = _deep_merge(out[k], v)
            else:
                out[k] = to_plain(v)
    return out


def merge_trainer_cfg(
    trainer_cfg: Mapping[str, Any] | DictConfig, overrides: Mapping[str, Any]
) -> DictConfig:
    """Return the ``trainer`` config node with a strategy's / stage's overrides (later wins).

    Args:
        trainer_cfg: the base ``trainer`` node (``conf/trainer``).
        overrides: ``PreparedModel.trainer_overrides``.

    Returns:
        A new merged ``DictConfig``.
    """
    merged = OmegaConf.merge(OmegaConf.create(to_plain(trainer_cfg)), OmegaConf.create(overrides))
    assert isinstance(merged, DictConfig)
    return merged


def pretrained_model_path(models_dir: str | Path, run: str) -> Path:
    """Path of the export of pretraining run ``run``: ``<models_dir>/pretrain/<run>.pt``."""
    return Path(models_dir) / "pretrain" / f"{run}.pt"


def strategy_name(strategy_cfg: Mapping[str, Any] | DictConfig) -> str:
    """Return the validated ``strategy_cfg.name``.

    Raises:
        ValueError: unknown strategy.
    """
    name = strategy_cfg.get("name")
    if name not in STRATEGIES:
        raise ValueError(f"unknown transfer strategy {name!r}; choose from {list(STRATEGIES)}")
    return str(name)


def regressor_name(strategy_cfg: Mapping[str, Any] | DictConfig) -> str:
    """Return the validated regressor of a ``features`` strategy (default ``ridge``)."""
    name = strategy_cfg.get("regressor") or "ridge"
    if name not in REGRESSORS:
        raise ValueError(f"unknown regressor {name!r}; choose from {list(REGRESSORS)}")
    return str(name)


def uses_sklearn_regressor(strategy_cfg: Mapping[str, Any] | DictConfig) -> bool:
    """Tell whether the strategy is ``features`` with ``ridge``/``random_forest``.

    Such a strategy needs no Lightning fit: use :func:`extract_embeddings` and
    :class:`EmbeddingRegressor`.
    """
    return (
        strategy_name(strategy_cfg) == "features"
        and regressor_name(strategy_cfg) in SKLEARN_REGRESSORS
    )


def needs_input_scaler(strategy_cfg: Mapping[str, Any] | DictConfig) -> bool:
    """Whether a descriptor-MLP encoder must get ``fit_input_scaler`` on the κ train rows.

    Only ``scratch``: transferred encoders keep the input statistics of their pretraining data
    (copied with the encoder state), which their weights were trained on.
    """
    return strategy_name(strategy_cfg) == "scratch"


def _comparable_card(card: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in to_plain(card).items() if k not in DOC_KEYS | HEAD_KEYS}


def card_differences(
    model_cfg: Mapping[str, Any] | DictConfig, pretrained_cfg: Mapping[str, Any] | DictConfig
) -> dict[str, tuple[Any, Any]]:
    """Encoder-relevant keys on which two model cards differ.

    Head keys (:data:`HEAD_KEYS`) and documentation (:data:`DOC_KEYS`) are ignored: the head is
    rebuilt for the new target anyway.

    Returns:
        ``{key: (value in model_cfg, value in pretrained_cfg)}``; missing keys show as
        ``"<missing>"``.
    """
    a, b = _comparable_card(model_cfg), _comparable_card(pretrained_cfg)
    missing = "<missing>"
    return {
        k: (a.get(k, missing), b.get(k, missing))
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    }


def load_pretrained(
    path: str | Path, model_cfg: Mapping[str, Any] | DictConfig, run: str | None = None
) -> tuple[KappaModel, dict[str, Any]]:
    """Load a pretrained export and check it was built from the same architecture.

    Args:
        path: ``models/pretrain/<run>.pt`` (:func:`kappaflow.training.export.save_model`).
        model_cfg: the model card the transferred model is built from.
        run: pretraining run name, for the error message (default: the file stem).

    Returns:
        ``(pretrained model in eval mode, info)``; ``info`` as returned by
        :func:`~kappaflow.training.export.load_model` (``model_cfg``, ``n_targets``, ...).

    Raises:
        FileNotFoundError: no such file (names the ``dvc repro pretrain@<run>`` producing it).
        ValueError: the export was built from a model card with another encoder architecture
            (names the differing keys).
    """
    from kappaflow.training.export import load_model

    p = Path(path)
    if not p.is_file():
        name = run or p.stem
        raise FileNotFoundError(
            f"pretrained model {p} not found: it is produced by `dvc repro pretrain@{name}` "
            f"(a run of pretrain.runs only when a selected strategy or study includes "
            f"conf/pretrain/runs/{name}.yaml in its defaults list)"
        )
    pre, _, info = load_model(p)
    diff = card_differences(model_cfg, info["model_cfg"])
    if diff:
        detail = ", ".join(
            f"{k}: {mine!r} here vs {theirs!r} pretrained" for k, (mine, theirs) in diff.items()
        )
        raise ValueError(
            f"architecture mismatch between the model card and pretrained export {p}: "
            f"differing keys {sorted(diff)} ({detail})"
        )
    assert isinstance(pre, KappaModel)
    return pre, info


def copy_encoder(target: KappaModel, source: KappaModel) -> None:
    """Copy the encoder state of ``source`` into ``target`` exactly.

    Parameters *and* buffers are copied: batch-norm statistics, element tables, the descriptor
    input scaler.

    Raises:
        ValueError: the encoders' state dicts differ in keys or shapes (names them).
    """
    src = source.encoder.state_dict()
    dst = target.encoder.state_dict()
    bad = sorted(set(src) ^ set(dst))
    bad += sorted(k for k in set(src) & set(dst) if src[k].shape != dst[k].shape)
    if bad:
        raise ValueError(f"encoder state mismatch (architecture differs) on keys {bad}")
    target.encoder.load_state_dict(src, strict=True)


#: Fallback of a strategy's / stage's ``encoder_lr_mult`` (= the trainer's, conf/trainer).
_LR_MULT: float = OPTIM_DEFAULTS["encoder_lr_mult"]


def _float(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key)
    return float(default if value is None else value)


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    return int(default if value is None else value)


def _apply_mode(
    model: KappaModel, mode: str, encoder_lr_mult: float, unfreeze_last_k: int
) -> dict[str, Any]:
    """Put ``model`` in ``finetune``/``freeze`` mode; return the optimizer overrides."""
    model.unfreeze_encoder()
    if mode == "finetune":
        if encoder_lr_mult <= 0:
            raise ValueError("finetune needs encoder_lr_mult > 0 (use strategy freeze to freeze)")
        return {"optim": {"encoder_lr_mult": encoder_lr_mult}}
    if mode == "freeze":
        model.freeze_encoder(unfreeze_last_k)
        if unfreeze_last_k == 0:
            # KappaLightningModule: 0 freezes the whole encoder (idempotent with the above).
            return {"optim": {"encoder_lr_mult": 0.0}}
        if encoder_lr_mult <= 0:
            raise ValueError(
                "freeze with unfreeze_last_k > 0 needs encoder_lr_mult > 0 "
                "(encoder_lr_mult 0 would freeze the unfrozen blocks again)"
            )
        return {"optim": {"encoder_lr_mult": encoder_lr_mult}}
    raise ValueError(f"unknown stage strategy {mode!r}; choose from {list(STAGE_STRATEGIES)}")


# ---------------------------------------------------------------------------------- API
def stage_plan(
    strategy_cfg: Mapping[str, Any] | DictConfig, target_dataset: str | None = None
) -> list[StageSpec]:
    """Read the stages of a ``two_stage`` strategy, in order, from ``strategy_cfg.stages``.

    Each stage inherits ``encoder_lr_mult`` / ``unfreeze_last_k`` / ``trainer`` of the strategy
    unless it sets its own (stage ``trainer`` is merged over strategy ``trainer``). The last
    stage may leave ``dataset`` null: it then trains on ``target_dataset`` (the κ set being
    evaluated); without ``target_dataset`` its ``dataset`` is ``""``.

    Raises:
        ValueError: not a ``two_stage`` strategy, no stages, a stage without ``dataset``, or an
            unknown stage strategy.
    """
    if strategy_name(strategy_cfg) != "two_stage":
        raise ValueError(f"stage_plan needs a two_stage strategy, got {strategy_cfg.get('name')!r}")
    cfg = to_plain(strategy_cfg)
    stages = cfg.get("stages") or []
    if not stages:
        raise ValueError("two_stage strategy has no `stages`")
    base_trainer = cfg.get("trainer") or {}
    out = []
    for i, st in enumerate(stages):
        if not st.get("dataset") and i == len(stages) - 1:
            st = {**st, "dataset": target_dataset or ""}  # "" until the caller names the set
        elif not st.get("dataset"):
            raise ValueError(f"two_stage stage {i} has no `dataset`")
        mode = st.get("strategy") or "finetune"
        if mode not in STAGE_STRATEGIES:
            raise ValueError(
                f"two_stage stage {i}: strategy {mode!r} not in {list(STAGE_STRATEGIES)}"
            )
        targets = st.get("targets")
        out.append(
            StageSpec(
                index=i,
                dataset=str(st["dataset"]),
                strategy=str(mode),
                encoder_lr_mult=_float(
                    st, "encoder_lr_mult", _float(cfg, "encoder_lr_mult", _LR_MULT)
                ),
                unfreeze_last_k=_int(st, "unfreeze_last_k", _int(cfg, "unfreeze_last_k", 0)),
                reinit_head=bool(st.get("reinit_head", False)),
                targets=tuple(str(t) for t in targets) if targets else None,
                trainer=_deep_merge(base_trainer, st.get("trainer") or {}),
            )
        )
    return out


def apply_stage(
    model: KappaModel, stage: StageSpec | Mapping[str, Any], n_targets: int
) -> PreparedModel:
    """Prepare the model trained in stage k for stage k+1 (in place): keep the encoder.

    The encoder (weights and buffers) is kept as trained; the encoder is unfrozen and then set to
    the stage's mode (``finetune`` / ``freeze``). The head is re-initialised when
    ``stage.reinit_head`` is true or ``n_targets`` differs from the current head's.

    Args:
        model: the model after the previous stage.
        stage: a :class:`StageSpec` (or a mapping with its fields; ``index`` optional).
        n_targets: number of targets of the new stage (1 for κ).

    Returns:
        ``(model, trainer_overrides)``; ``model`` is the same object, modified in place.
    """
    if not isinstance(stage, StageSpec):
        st = to_plain(stage)
        stage = StageSpec(
            index=int(st.get("index", 0)),
            dataset=str(st.get("dataset", "")),
            strategy=str(st.get("strategy") or "finetune"),
            encoder_lr_mult=_float(st, "encoder_lr_mult", _LR_MULT),
            unfreeze_last_k=_int(st, "unfreeze_last_k", 0),
            reinit_head=bool(st.get("reinit_head", False)),
            trainer=dict(st.get("trainer") or {}),
        )
    model.unfreeze_encoder()
    if stage.reinit_head or model.n_targets != int(n_targets):
        model.replace_head(int(n_targets))
    optim = _apply_mode(model, stage.strategy, stage.encoder_lr_mult, stage.unfreeze_last_k)
    log.info(
        "two_stage stage %d on %s: %s (%d/%d parameters trainable)",
        stage.index,
        stage.dataset,
        stage.strategy,
        model.n_parameters(trainable_only=True),
        model.n_parameters(),
    )
    return PreparedModel(model, _deep_merge(stage.trainer, optim))


def prepare_model(
    strategy_cfg: Mapping[str, Any] | DictConfig,
    model_cfg: Mapping[str, Any] | DictConfig,
    pretrained_path: str | Path | None,
    n_targets: int,
) -> PreparedModel:
    """Build the model of a transfer strategy, ready for training on κ.

    The model is built from ``model_cfg`` (so the head follows the κ model card and has
    ``n_targets`` outputs); for every strategy but ``scratch`` the encoder state (weights and
    buffers) is copied exactly from the pretrained export. Call
    ``lightning.seed_everything(seed)`` first: head (and scratch encoder) initialisation uses the
    global torch RNG.

    Args:
        strategy_cfg: ``conf/transfer/<name>.yaml`` node (``name``, ``pretrained``, ``model``,
            ``encoder_lr_mult``, ``unfreeze_last_k``, ``regressor``, ``stages``, ``trainer``).
        model_cfg: the model card (``conf/models/<name>.yaml``); must match the pretrained card.
        pretrained_path: ``models/pretrain/<run>.pt`` (see :func:`pretrained_model_path`);
            ignored (may be None) for ``scratch``, optional for ``two_stage`` (None: the chain
            starts from random weights), None for an encoder that ships its weights
            (``Encoder.ships_weights``: a universal potential), required otherwise.
        n_targets: number of targets of the new head (1 for κ).

    Returns:
        ``(model, trainer_overrides)``. Overrides are nested ``trainer`` keys: the strategy's
        ``trainer`` block plus ``optim.encoder_lr_mult`` implied by the strategy (the strategy's
        own keys win). For ``two_stage`` the model and overrides are those of stage 0
        (:func:`stage_plan`); later stages use :func:`apply_stage`. For ``features`` the encoder
        is frozen; with ``ridge``/``random_forest`` (:func:`uses_sklearn_regressor`) use
        :func:`extract_embeddings` + :class:`EmbeddingRegressor` instead of a Lightning fit.

    Raises:
        ValueError: unknown strategy/regressor, ``strategy_cfg.model`` not the card's name,
            missing pretrained path for a transfer strategy, or architecture mismatch.
        FileNotFoundError: the pretrained export does not exist.
    """
    from kappaflow.models import build_model

    name = strategy_name(strategy_cfg)
    cfg = to_plain(strategy_cfg)
    card = to_plain(model_cfg)
    want = cfg.get("model")
    if want is not None and want != card.get("name"):
        raise ValueError(
            f"transfer strategy {name!r} is configured for model {want!r} "
            f"but got the model card {card.get('name')!r}"
        )
    trainer = dict(cfg.get("trainer") or {})
    model = build_model(card, int(n_targets))
    assert isinstance(model, KappaModel)
    ships_weights = bool(getattr(model.encoder, "ships_weights", False))
    if name == "scratch":
        if ships_weights:
            raise ValueError(
                f"scratch on {card.get('name')!r}: this encoder is built with the weights that "
                "ship in its package; a from-scratch baseline uses a trainable architecture "
                "(cgcnn, megnet, descriptor_mlp)"
            )
        if pretrained_path is not None:
            log.info("scratch: ignoring pretrained model %s", pretrained_path)
        return PreparedModel(model, trainer)

    if ships_weights:
        if pretrained_path is not None:
            raise ValueError(
                f"transfer strategy {name!r}: {card.get('name')!r} ships its pretrained weights; "
                f"set `pretrained: null` (got {pretrained_path})"
            )
        log.info("%s: encoder weights of %s (bundled) -> new head", name, card.get("name"))
    elif pretrained_path is None:
        if name == "two_stage":  # chain starting from random weights
            _, over = apply_stage(model, stage_plan(cfg)[0], int(n_targets))
            return PreparedModel(model, over)
        raise ValueError(f"transfer strategy {name!r} needs a pretrained model (`pretrained`)")
    else:
        pre, info = load_pretrained(pretrained_path, card, run=cfg.get("pretrained"))
        copy_encoder(model, pre)
        log.info(
            "%s: encoder of %s (pretrained on %s, %d targets) -> new head with %d targets",
            name,
            pretrained_path,
            (info.get("meta") or {}).get("dataset", "?"),
            int(info["n_targets"]),
            int(n_targets),
        )
    lr_mult = _float(cfg, "encoder_lr_mult", _LR_MULT)
    k = _int(cfg, "unfreeze_last_k", 0)
    if name == "finetune":
        return PreparedModel(model, _deep_merge(trainer, _apply_mode(model, name, lr_mult, 0)))
    if name == "freeze":
        return PreparedModel(model, _deep_merge(trainer, _apply_mode(model, name, lr_mult, k)))
    if name == "features":
        regressor_name(cfg)  # validate
        return PreparedModel(model, _deep_merge(trainer, _apply_mode(model, "freeze", 0.0, 0)))
    first = stage_plan(cfg)[0]
    _, over = apply_stage(model, first, int(n_targets))
    return PreparedModel(model, over)


# ---------------------------------------------------------------------------------- features
@torch.no_grad()
def extract_embeddings(
    model: KappaModel, dataset: Sequence[Any], batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Per-material embeddings ``model.encode(batch)`` in eval mode, in dataset order.

    Args:
        model: a ``KappaModel`` (its device is used; its train/eval mode is restored).
        dataset: PyG ``Data`` items (graphs, or composition items with ``comp``).
        batch_size: items per batch.
        progress: a progress bar with ETA (crystals) when there are more than two batches.

    Returns:
        ``np.ndarray`` float64 ``[N, embed_dim]``.
    """
    from torch_geometric.loader import DataLoader
    from tqdm.auto import tqdm

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    # a frozen foundation potential on a few thousand crystals takes minutes on a CPU
    bar = tqdm(
        total=len(dataset), desc=f"{model.name or 'encoder'} embeddings", unit="crystal",
        disable=not progress or len(loader) <= 2, leave=False,
    )  # fmt: skip
    try:
        for batch in loader:
            out.append(model.encode(batch.to(device)).double().cpu().numpy())
            bar.update(int(out[-1].shape[0]))
    finally:
        bar.close()
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim))


class EmbeddingRegressor:
    """A scikit-learn regressor on frozen embeddings, fitted on log10 κ, predicting κ (W/m/K).

    ``ridge``: ``StandardScaler`` + ``RidgeCV`` (``alphas``, default
    :data:`DEFAULT_RIDGE_ALPHAS`); ``random_forest``: ``RandomForestRegressor`` (any of its
    keyword arguments; ``random_state`` = ``seed``; every core unless ``n_jobs`` is given:
    :data:`~kappaflow.evaluation.baselines.FOREST_N_JOBS`).

    Args:
        name: ``ridge`` or ``random_forest``.
        params: keyword arguments of the regressor (from ``regressor_params.<name>``).
        transform: ``log10`` (κ: fit on log10 κ, predictions back in W/m/K) or ``none``.
        seed: random state.
        clip_margin: predictions (on the fitted scale: decades of κ for ``log10``) are clipped
            to ``[min - clip_margin, max + clip_margin]`` of the training targets; None: no
            clipping. A linear model on embeddings of an out-of-distribution crystal can
            extrapolate by many decades (one D2 fold: MAPE 7.9e6 % before this guard).
    """

    def __init__(
        self,
        name: str = "ridge",
        params: Mapping[str, Any] | None = None,
        transform: str = "log10",
        seed: int = 0,
        clip_margin: float | None = 1.0,
    ) -> None:
        if name not in SKLEARN_REGRESSORS:
            raise ValueError(
                f"regressor {name!r} is not a scikit-learn regressor {list(SKLEARN_REGRESSORS)}"
                " (mlp_head trains the model's head with the usual fit)"
            )
        if transform not in ("log10", "none"):
            raise ValueError(f"transform must be log10 or none, got {transform!r}")
        self.name = name
        self.params = dict(to_plain(params or {}))
        self.transform = transform
        self.seed = int(seed)
        self.clip_margin = None if clip_margin is None else float(clip_margin)
        self.estimator: Any = None
        self.n_targets: int | None = None
        self._range: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_cfg(
        cls, strategy_cfg: Mapping[str, Any] | DictConfig, seed: int = 0
    ) -> EmbeddingRegressor:
        """From a ``features`` strategy: ``regressor`` and ``regressor_params.<regressor>``."""
        name = regressor_name(strategy_cfg)
        params = (to_plain(strategy_cfg.get("regressor_params")) or {}).get(name) or {}
        margin = strategy_cfg.get("clip_margin", 1.0)
        return cls(name, params, seed=seed, clip_margin=margin)

    def _build(self) -> Any:
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.name == "ridge":
            alphas = self.params.get("alphas", DEFAULT_RIDGE_ALPHAS)
            extra = {k: v for k, v in self.params.items() if k != "alphas"}
            return make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas), **extra))
        kwargs = {"random_state": self.seed, "n_jobs": FOREST_N_JOBS, **self.params}
        return RandomForestRegressor(**kwargs)

    def fit(self, X: np.ndarray, y: np.ndarray) -> EmbeddingRegressor:
        """Fit on training rows only.

        Args:
            X: ``[N, embed_dim]`` embeddings of the training rows.
            y: ``[N]`` or ``[N, T]`` targets in raw units (κ in W/m/K, > 0 for ``log10``);
                rows with any NaN are dropped.

        Raises:
            ValueError: non-positive κ with the log10 transform, shape mismatch, no rows.
        """
        X = np.asarray(X, dtype=np.float64)
        y2 = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
        ok = np.isfinite(y2).all(axis=1)
        X, y2 = X[ok], y2[ok]
        if len(X) == 0:
            raise ValueError("no training rows with finite targets")
        if self.transform == "log10":
            if (y2 <= 0).any():
                raise ValueError("log10 transform needs κ > 0 (W/m/K)")
            y2 = np.log10(y2)
        self.n_targets = y2.shape[1]
        self._range = (y2.min(axis=0), y2.max(axis=0))
        self.estimator = self._build().fit(X, y2[:, 0] if self.n_targets == 1 else y2)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions in raw units (κ in W/m/K): ``[N]`` for one target, else ``[N, T]``."""
        if self.estimator is None:
            raise RuntimeError("EmbeddingRegressor.predict before fit")
        z = np.asarray(self.estimator.predict(np.asarray(X, dtype=np.float64)), dtype=np.float64)
        if self.clip_margin is not None and self._range is not None:
            lo, hi = self._range
            if z.ndim == 1:
                lo, hi = lo[0], hi[0]
            z = np.clip(z, lo - self.clip_margin, hi + self.clip_margin)
        return np.power(10.0, z) if self.transform == "log10" else z

    def to_head(self) -> SklearnHead:
        """Return the fitted regressor as a pickle-free torch head (for the fold export).

        ``ridge`` -> :class:`~kappaflow.models.sklearn_head.RidgeHead` (scaler mean/scale,
        coefficients, intercept); ``random_forest`` ->
        :class:`~kappaflow.models.sklearn_head.ForestHead` (every tree's arrays). The clip range
        is the training range ± ``clip_margin`` (±inf without clipping). On the same embeddings
        the head's output is log10 of :meth:`predict` (κ in W/m/K) for ``log10``, :meth:`predict`
        itself for ``none`` (to float64 round-off); see :mod:`kappaflow.models.sklearn_head` for
        why arrays rather than a pickle or skops file.

        Raises:
            RuntimeError: called before :meth:`fit`.
        """
        if self.estimator is None or self._range is None or self.n_targets is None:
            raise RuntimeError("EmbeddingRegressor.to_head before fit")
        lo, hi = self._range
        margin = np.inf if self.clip_margin is None else self.clip_margin
        clip = {"clip_lo": lo - margin, "clip_hi": hi + margin, "transform": self.transform}
        if self.name == "ridge":
            scaler, ridge = self.estimator[0], self.estimator[-1]
            dim = int(scaler.n_features_in_)
            return RidgeHead(
                mean=np.zeros(dim) if scaler.mean_ is None else scaler.mean_,
                scale=np.ones(dim) if scaler.scale_ is None else scaler.scale_,
                coef=np.reshape(ridge.coef_, (self.n_targets, dim)),
                intercept=np.reshape(ridge.intercept_, (self.n_targets,)),
                **clip,
            )
        forest = self.estimator
        trees = [tree.tree_ for tree in forest.estimators_]
        return ForestHead.from_trees(trees, int(forest.n_features_in_), **clip)
