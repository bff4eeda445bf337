"""Search spaces: parsing, clear errors, conditional / strategy-templated suggestions."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

from kappaflow.config import compose
from kappaflow.sweep.settings import SweepSettings
from kappaflow.sweep.space import (
    SpaceError,
    check_paths,
    default_params,
    format_value,
    parse_space,
    suggest,
    to_overrides,
)

LR = "transfer.strategies.finetune.trainer.optim.lr"
TEMPLATE_LR = "transfer.strategies.{strategy}.trainer.optim.lr"


@pytest.fixture(scope="module")
def cfg():
    from kappaflow.sweep.objective import ConfigSource

    return ConfigSource(()).load()  # the default profile + the searched recipe (finetune)


@pytest.fixture(scope="module")
def strategy_cfg():
    from kappaflow.sweep.objective import ConfigSource

    return ConfigSource(("sweep=strategy",)).load()


def test_the_sweep_composes_the_recipes_it_searches():
    """The default profile selects one stack alone: a sweep adds the strategies it searches."""
    from kappaflow.sweep.objective import ConfigSource

    assert list(compose().transfer.strategies) == ["sevennet_stack"]
    assert ConfigSource(()).base_overrides() == ("transfer=[sevennet_stack,finetune]",)
    assert (
        ConfigSource(("sweep=strategy",))
        .base_overrides()[-1]
        .startswith("transfer=[sevennet_stack,")
    )
    assert ConfigSource(("transfer=all",)).base_overrides() == ("transfer=all",)  # user's choice
    params_source = ConfigSource((), "params.yaml")  # a params.yaml cannot pick config groups
    assert params_source.base_overrides() == ()
    settings = SweepSettings.from_cfg(compose())
    with pytest.raises(SpaceError, match=r"config dump 'transfer=\[finetune,sevennet_stack\]'"):
        check_paths(settings.params, compose())


def test_parse_types_to_optuna_distributions():
    specs = parse_space(
        [
            {"path": LR, "type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            {"path": "a.k", "type": "int", "low": 0, "high": 3},
            {"path": "a.s", "type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
            {"path": "a.b", "type": "categorical", "choices": [16, 32, 64]},
        ]
    )
    assert [s.path for s in specs] == [LR, "a.k", "a.s", "a.b"]
    assert specs[0].distribution() == FloatDistribution(1e-4, 3e-3, log=True)
    assert specs[1].distribution() == IntDistribution(0, 3)
    assert specs[2].distribution() == FloatDistribution(0.0, 1.0, step=0.25)
    assert specs[3].distribution() == CategoricalDistribution([16, 32, 64])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "a.x", "type": "uniform", "low": 0, "high": 1}, "unknown type 'uniform'"),
        ({"path": "a.x", "type": "float", "low": 2.0, "high": 1.0}, r"low \(2.0\) > high \(1.0\)"),
        ({"path": "a.x", "type": "float", "low": 0.0, "high": 1.0, "log": True}, "low > 0"),
        ({"path": "a.x", "type": "int", "low": -1, "high": 4, "log": True}, "low > 0"),
        ({"path": "a.x", "type": "float", "low": "1e-3", "high": 1.0}, "`low` must be a number"),
        ({"path": "a.x", "type": "float", "high": 1.0}, "`low` must be a number"),
        ({"path": "a.x", "type": "int", "low": 0.5, "high": 4}, "integer `low`"),
        ({"path": "a.x", "type": "categorical", "choices": []}, "non-empty list"),
        ({"path": "a.x", "type": "categorical", "choices": [[1, 2]]}, "str/int/float/bool/null"),
        ({"path": "a.x", "type": "categorical", "choices": [1, 1]}, "duplicated choices"),
        (
            {"path": "a.x", "type": "float", "low": 0, "high": 1, "lg": True},
            r"unknown key\(s\) \['lg'\]",
        ),
        (
            {"path": "a.x", "type": "float", "low": 1e-3, "high": 1, "log": True, "step": 0.1},
            "cannot be combined",
        ),
        ({"path": "a x", "type": "float", "low": 0, "high": 1}, "dotted config key"),
        ({"type": "float", "low": 0, "high": 1}, "dotted config key"),
        ("a.x", "expected a mapping"),
    ],
)
def test_bad_entries_raise_a_specific_error(entry, message):
    with pytest.raises(SpaceError, match=message):
        parse_space([entry])


def test_bad_space_structure():
    with pytest.raises(SpaceError, match="non-empty list"):
        parse_space([])
    entry = {"path": "a.x", "type": "int", "low": 0, "high": 3}
    with pytest.raises(SpaceError, match="searched twice"):
        parse_space([entry, entry])
    later = {"path": "a.y", "type": "int", "low": 0, "high": 3, "when": {"a.x": 1}}
    with pytest.raises(SpaceError, match="searched later"):
        parse_space([later, entry])
    templated = {"path": TEMPLATE_LR, "type": "float", "low": 0.1, "high": 1.0}
    strategy = {"path": "sweep.strategy", "type": "categorical", "choices": ["finetune"]}
    with pytest.raises(SpaceError, match="needs sweep.strategy searched before it"):
        parse_space([templated, strategy])


def test_configured_spaces_parse(cfg, strategy_cfg):
    assert [s.path for s in parse_space(cfg.sweep.params)][0] == LR
    specs = parse_space(strategy_cfg.sweep.params)
    assert specs[0].path == "sweep.strategy" and specs[3].when == {"sweep.strategy": ("freeze",)}
    check_paths(specs, strategy_cfg)  # every templated path exists for every strategy


def test_suggest_resolves_strategy_and_conditions(strategy_cfg):
    specs = parse_space(strategy_cfg.sweep.params)
    freeze = FixedTrial(
        {
            "sweep.strategy": "freeze",
            TEMPLATE_LR: 3e-4,
            "transfer.strategies.{strategy}.trainer.batch_size": 16,
            "transfer.strategies.freeze.unfreeze_last_k": 2,
            "transfer.strategies.{strategy}.encoder_lr_mult": 0.5,
        }
    )
    assert suggest(freeze, specs, strategy_cfg) == {
        "sweep.strategy": "freeze",
        "transfer.strategies.freeze.trainer.optim.lr": 3e-4,
        "transfer.strategies.freeze.trainer.batch_size": 16,
        "transfer.strategies.freeze.unfreeze_last_k": 2,
        "transfer.strategies.freeze.encoder_lr_mult": 0.5,
    }
    scratch = FixedTrial(
        {
            "sweep.strategy": "scratch",
            TEMPLATE_LR: 1e-3,
            "transfer.strategies.{strategy}.trainer.batch_size": 64,
        }
    )
    # unfreeze_last_k and encoder_lr_mult are inactive for scratch: not even suggested
    assert suggest(scratch, specs, strategy_cfg) == {
        "sweep.strategy": "scratch",
        "transfer.strategies.scratch.trainer.optim.lr": 1e-3,
        "transfer.strategies.scratch.trainer.batch_size": 64,
    }


def test_default_params_are_the_configured_values(cfg, strategy_cfg):
    params, problems = default_params(parse_space(cfg.sweep.params), cfg)
    assert problems == []
    assert params == {
        LR: 0.001,
        "transfer.strategies.finetune.encoder_lr_mult": 0.1,
        "transfer.strategies.finetune.trainer.batch_size": 32,
    }
    params, problems = default_params(parse_space(strategy_cfg.sweep.params), strategy_cfg)
    assert params["sweep.strategy"] == "finetune" and params[TEMPLATE_LR] == 0.001
    assert "transfer.strategies.freeze.unfreeze_last_k" not in params  # inactive for finetune
    narrow = parse_space([{"path": LR, "type": "float", "low": 0.01, "high": 0.1}])
    assert default_params(narrow, cfg) == ({}, [(LR, 0.001)])


def test_check_paths_names_a_missing_key(cfg):
    bad = parse_space(
        [
            {
                "path": "transfer.strategies.finetune.trainer.optim.lrr",
                "type": "float",
                "low": 0.1,
                "high": 1.0,
            }
        ]
    )
    with pytest.raises(
        SpaceError, match="'transfer.strategies.finetune.trainer.optim.lrr' is not a key"
    ):
        check_paths(bad, cfg)
    unknown = parse_space(
        [{"path": "sweep.strategy", "type": "categorical", "choices": ["finetune", "nope"]}]
    )
    with pytest.raises(SpaceError, match=r"\['nope'\] not in transfer.strategies"):
        check_paths(unknown, cfg)


@pytest.mark.parametrize("value", [1e-05, 0.00123, 3.0, 1.5e20, 16, True, None, "freeze", "a b"])
def test_override_values_round_trip_through_yaml_and_hydra(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = format_value(value)
    assert yaml.safe_load(text) == value
    parsed = OverridesParser.create().parse_overrides([f"a.b={text}"])[0].value()
    assert parsed == value and type(parsed) is type(value)
    assert to_overrides({"a.b": value}) == [f"a.b={text}"]
    assert OmegaConf.create({"a": {"b": yaml.safe_load(text)}}).a.b == value
