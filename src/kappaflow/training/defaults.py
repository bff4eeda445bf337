"""Code-side fallbacks of the ``trainer`` config node: the ONE place they are written in code.

``conf/trainer/default.yaml`` is the owner of every trainer value; the pipeline always passes the
composed node, so these fallbacks only fill keys that a hand-written, partial trainer config
(tests, notebooks, library use) leaves out. They mirror ``conf/trainer/default.yaml`` value for
value (``seed`` excepted: conf interpolates the project ``seed``); ``tests/training/test_fit.py``
checks that they agree. Change a default in conf *and* here, never elsewhere in code: the trainer
(:func:`kappaflow.training.trainer.resolve_cfg`), the Lightning module
(:class:`kappaflow.training.module.KappaLightningModule`) and the transfer strategies all read
these constants.
"""

from __future__ import annotations

from typing import Any

#: AdamW settings (``trainer.optim``).
OPTIM_DEFAULTS: dict[str, Any] = {
    "lr": 0.001,  # head learning rate
    "weight_decay": 1.0e-05,
    "encoder_lr_mult": 1.0,  # encoder lr = lr * encoder_lr_mult
}

#: Learning-rate schedule (``trainer.scheduler``).
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "name": "cosine",
    "warmup_epochs": 0.0,
    "min_lr_ratio": 0.01,
    "factor": 0.5,
    "patience": 10,
    "min_lr": 1.0e-06,
}

#: Every key of the ``trainer`` node.
TRAINER_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "max_epochs": 300,
    "min_epochs": 1,
    "batch_size": 64,
    "eval_batch_size": None,
    "num_workers": 0,
    "cpu_threads": 1,
    "accelerator": "auto",
    "devices": 1,
    "strategy": "auto",  # devices > 1: ddp_fork on CPU, ddp_spawn on GPU (resolve_cfg)
    "precision": "auto",
    "deterministic": "auto",
    "gradient_clip_val": 1.0,
    "early_stopping": {"patience": 30, "min_delta": 0.0},
    "optim": OPTIM_DEFAULTS,
    "scheduler": SCHEDULER_DEFAULTS,
    "limit_train_batches": 1.0,
    "limit_val_batches": 1.0,
    "limit_test_batches": 1.0,
    "limit_predict_batches": 1.0,
    "num_sanity_val_steps": 0,
    "progress_bar": "tqdm",
    "refresh_rate": 20,
    "log_every_n_steps": 50,
    "resume": True,
    "csv_logger": True,
}
