from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kappaflow.cards import registry_from_cfg
from kappaflow.config import compose, flatten, load_params, to_params_yaml
from kappaflow.layout import project_root


def test_params_yaml_is_the_composed_default():
    committed = (project_root() / "params.yaml").read_text()
    assert committed == to_params_yaml(compose()), (
        "params.yaml is stale: regenerate with `kappaflow config dump > params.yaml`"
    )


def test_every_shared_dataset_has_a_card(real_data_root: Path):
    import json

    manifest = json.loads((real_data_root / "MANIFEST.json").read_text())
    cards = registry_from_cfg(compose())
    assert sorted(c.path for c in cards.values()) == sorted(manifest)
    for spec in cards.values():
        assert spec.sha256 == manifest[spec.path]["sha256"], spec.name
        for target in spec.targets:
            assert target.column in manifest[spec.path]["columns"], (spec.name, target.column)


def test_load_params_overrides(tmp_path: Path):
    p = tmp_path / "params.yaml"
    p.write_text("a: 1\nb:\n  c: [1, 2]\nseed: 3\nd: ${seed}\n")
    cfg = load_params(p, ["a=5", "b.c=[3]", "+e=x"])
    assert cfg.a == 5 and list(cfg.b.c) == [3] and cfg.e == "x" and cfg.d == 3
    with pytest.raises(KeyError, match="no key 'zz'"):
        load_params(p, ["zz=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_params(p, ["a"])


def test_flatten():
    cfg = OmegaConf.create({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}})
    assert flatten(cfg) == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f": "{}"}


def test_one_transfer_strategy_alone():
    """`dvc exp run -S transfer=freeze` composes that strategy alone (a smaller matrix)."""
    assert list(compose().transfer.strategies) == ["sevennet_stack"]  # the default profile
    assert list(compose(["transfer=all"]).transfer.strategies) == [
        "scratch",
        "finetune",
        "freeze",
        "features",
        "two_stage",
        "stack",
        "sevennet_features",
        "sevennet_stack",
        "sevennet_finetune",
    ]
    assert list(compose(["transfer=freeze"]).transfer.strategies) == ["freeze"]


CONF = project_root() / "conf" / "transfer"


def _runs_in_use(cfg) -> set[str]:
    """Pretraining runs the composed config uses: its strategies' and its studies' runs.

    The studies compose a strategy missing from ``transfer`` (``with_strategy``); pretrain_size
    replaces its strategy's run by each of ``evaluation.pretrain_size.runs``.
    """
    from kappaflow.transfer.fit_predict import with_strategy

    ev = cfg.evaluation
    other = ev.other_target_strategies if ev.other_targets else []  # no target: no stage
    study = {*other, *ev.extrapolation.methods, *ev.domain.methods}
    names = set(cfg.transfer.strategies) | {m for m in study if (CONF / f"{m}.yaml").is_file()}
    runs = {with_strategy(cfg, n).transfer.strategies[n].pretrained for n in names}
    runs |= set(ev.pretrain_size.runs.values())
    return runs - {None}


@pytest.mark.parametrize(
    "overrides", [[], ["transfer=freeze"], ["transfer=scratch"], ["transfer=[all,two_stage_cgcnn]"]]
)
def test_pretrain_runs_are_the_runs_in_use(overrides):
    """pretrain.runs (the DVC foreach) holds exactly the runs a selected strategy or study uses."""
    cfg = compose(overrides)
    assert set(cfg.pretrain.runs) == _runs_in_use(cfg)


def test_megnet_is_pretrained_only_for_two_stage():
    """ParAIsite's MEGNet (two_stage) is the only user of the most expensive pretraining run."""
    assert "megnet" not in compose().pretrain.runs  # the default profile: the stack alone
    default = compose(["transfer=all", "evaluation=full"])
    assert default.transfer.strategies.two_stage.pretrained == "megnet"
    assert list(default.pretrain.runs) == [
        "cgcnn",
        "descriptor_mlp_sps",
        "megnet",
        "cgcnn_f10",
        "cgcnn_f30",
    ]
    users = [s for s, node in default.transfer.strategies.items() if node.pretrained == "megnet"]
    assert users == ["two_stage"]
    for alone in ("freeze", "finetune", "scratch", "features", "two_stage_cgcnn"):
        assert "megnet" not in compose([f"transfer={alone}"]).pretrain.runs, alone
    assert "megnet" in compose(["transfer=two_stage"]).pretrain.runs


def test_default_profile_is_the_cpu_budget_and_smoke_still_covers_everything():
    """The default (README command 1, < 60 min on 2 CPU cores) runs the stack on the frozen
    SevenNet-0 potential (no pretraining run) and the cheap studies only; the smoke experiment
    (CI) still composes every strategy, study and stage."""
    default = compose()
    assert list(default.transfer.strategies) == ["sevennet_stack"]
    assert not default.pretrain.runs and default.pretrain.trainer.max_epochs <= 10
    assert not default.evaluation.pretrain_size.datasets and not default.evaluation.other_targets
    assert not default.phonons.datasets and not default.phonons.kappa.datasets
    assert set(default.evaluation.domain.methods) == {"magpie_rf", "sevennet_stack"}
    assert default.registry.gate.enforce  # the default's champion must pass the gate
    smoke = compose(["+experiment=smoke"])
    every = compose(["transfer=all"])
    assert list(smoke.transfer.strategies) == list(every.transfer.strategies)
    assert set(smoke.pretrain.runs) == {
        "cgcnn",
        "descriptor_mlp_sps",
        "megnet",
        "cgcnn_f10",
        "cgcnn_f30",
    }
    assert smoke.evaluation.pretrain_size.datasets and smoke.evaluation.other_targets
    assert smoke.phonons.datasets and "finetune" in smoke.evaluation.extrapolation.methods


def test_smoke_experiment_composes():
    cfg = compose(["+experiment=smoke"])
    assert cfg.pretrain.fraction <= 0.5 and cfg.evaluation.trainer.max_epochs <= 2
    assert cfg.datasets.mp_eform_bandgap.max_rows <= 5000  # prepared from a sample: seconds
    assert compose().datasets.mp_eform_bandgap.max_rows is None  # the default: every row


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["transfer=freeze"],
        ["+experiment=smoke", "transfer=freeze"],
        ["transfer=[all,two_stage_cgcnn]"],
        ["+experiment=paper"],
    ],
)
def test_config_dump_equals_dvc_hydra_composition(tmp_path, overrides):
    """`dvc exp run -S <overrides>` writes exactly what `kappaflow config dump <overrides>` does.

    Otherwise an experiment would see every interpolated param as changed and re-run its stages.
    """
    import yaml
    from dvc.utils.hydra import compose_and_dump

    from kappaflow.config import compose, to_params_yaml
    from kappaflow.layout import project_root

    root = project_root()
    out = tmp_path / "params.yaml"
    compose_and_dump(str(out), str(root / "conf"), None, "config", str(root), list(overrides))
    ours = yaml.safe_load(to_params_yaml(compose(list(overrides))))
    assert ours == yaml.safe_load(out.read_text())
    if "transfer=freeze" in overrides:
        assert list(ours["transfer"]["strategies"]) == ["freeze"]  # one strategy alone
        assert "megnet" not in ours["pretrain"]["runs"]  # DVC pretrains only the runs in use


def test_paper_experiment_composes_the_full_scale_gpu_profile():
    """`+experiment=paper` (issue 14): GPU trainer, every strategy incl. ParAIsite on CGCNN."""
    cfg = compose(["+experiment=paper"])
    default = compose()
    every = compose(["transfer=all", "evaluation=full"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert list(cfg.transfer.strategies) == [*every.transfer.strategies, "two_stage_cgcnn"]
    assert cfg.evaluation.pretrain_size == every.evaluation.pretrain_size  # every study
    assert list(cfg.evaluation.other_targets) == ["matbench_dielectric"]
    assert cfg.pretrain.fraction == 1.0 and list(cfg.phonons.kappa.datasets) == ["paraisite_d1"]
    assert {"cgcnn", "megnet", "descriptor_mlp_sps"} <= set(cfg.pretrain.runs)
    assert cfg.pretrain.trainer.max_epochs == 200
    assert cfg.evaluation.per_dataset.aflow_agl.n_repeats == 3
    assert cfg.evaluation.per_dataset.aflow_agl.trainer.batch_size == 64  # merged, not replaced
    assert cfg.phonons.potential == "sevennet-l3i5" and cfg.phonons.kappa.families is None
    assert cfg.screen.device == "cuda"
    assert cfg.datasets == default.datasets  # same data, same folds
