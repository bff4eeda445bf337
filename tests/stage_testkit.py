"""A tiny real project for stage tests: the tiny pretraining overrides and the data it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The composition the stage tests run on: every strategy and study, and the phonon descriptors
#: with phono3py κ of D1 (the default profile of params.yaml runs the stack and the cheap studies
#: only: conf/transfer/default.yaml, conf/evaluation/default.yaml).
FULL_PROFILE = [
    "transfer=all",
    "evaluation=full",
    "phonons.datasets=[paraisite_d1,paraisite_d2,paraisite_mix]",
    "phonons.study.datasets=[paraisite_d1,paraisite_d2,paraisite_mix]",
    "phonons.kappa.datasets=[paraisite_d1]",
]


def full_profile_params(path: Path) -> Path:
    """Write the params.yaml of :data:`FULL_PROFILE` to ``path`` (as `kappaflow config dump`)."""
    from kappaflow.config import compose, to_params_yaml

    path.write_text(to_params_yaml(compose(FULL_PROFILE)))
    return path


#: Overrides of a tiny project: a 2-epoch, 16-wide CGCNN pretrained on 30 % of perov5_val (run
#: ``tiny``), and the same for a one-block MEGNet (run ``tiny_megnet``, for two_stage).
TINY_PRETRAIN = [
    "pretrain.exclude_materials_of=[paraisite_d1]",
    "pretrain.fraction=0.3",
    "pretrain.trainer.max_epochs=2",
    "pretrain.trainer.batch_size=64",
    "+pretrain.runs.tiny={model: cgcnn, dataset: perov5_val, targets: [heat_ref, ind_gap]}",
    "+pretrain.runs.tiny_megnet={model: megnet, dataset: perov5_val, targets: [heat_ref, ind_gap]}",
    "pretrain.runs.descriptor_mlp_sps.trainer.max_epochs=3",
    "models.cgcnn.atom_fea_len=16",
    "models.cgcnn.n_conv=1",
    "models.cgcnn.h_fea_len=32",
    "models.megnet.n_gaussians=20",
    "models.megnet.pre=[16, 8]",
    "models.megnet.hidden=[16, 16]",
    "models.megnet.n_blocks=1",
    "models.megnet.set2set_hidden=4",
    "models.megnet.set2set_steps=1",
    "trainer.progress_bar=none",
]


def prepare_tiny_pretrained(cfg: Any) -> dict[str, Any]:
    """Ingest, prepare and featurize perov5_val and paraisite_d1, then pretrain run ``tiny``.

    Returns:
        The pretrain stage's metrics.
    """
    from kappaflow.stages.featurize import featurize_stage
    from kappaflow.stages.ingest import ingest_stage
    from kappaflow.stages.prepare import prepare_stage
    from kappaflow.stages.pretrain import pretrain_stage

    for name in ("perov5_val", "paraisite_d1"):
        ingest_stage(cfg, name)
        prepare_stage(cfg, name)
        featurize_stage(cfg, name)
    return pretrain_stage(cfg, "tiny")
