"""Search spaces of sweeps: the ``sweep.params`` list of a ``conf/sweep/*.yaml`` file.

Each entry names one Hydra override path and its distribution::

    - path: transfer.strategies.finetune.trainer.optim.lr   # the key a trial overrides
      type: float            # float | int | categorical
      low: 1.0e-4
      high: 3.0e-3
      log: true              # float/int: log-uniform (low > 0)
    - path: transfer.strategies.finetune.trainer.batch_size
      type: categorical
      choices: [16, 32, 64]  # str / int / float / bool / null values
    - path: transfer.strategies.freeze.unfreeze_last_k
      type: int
      low: 0
      high: 3
      when: {sweep.strategy: freeze}   # only searched when earlier values / the config match

``{strategy}`` in a path stands for the trial's transfer strategy (``sweep.strategy``, searched
or configured), so one entry can tune the learning rate of whichever strategy a trial runs. The
Optuna parameter name is the path as written; the override applies the resolved path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna

TYPES = ("float", "int", "categorical")
STRATEGY_PATH = "sweep.strategy"
PLACEHOLDER = "{strategy}"
_KEYS = {
    "float": {"path", "type", "low", "high", "log", "step", "when"},
    "int": {"path", "type", "low", "high", "log", "step", "when"},
    "categorical": {"path", "type", "choices", "when"},
}
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|\{strategy\}))*$")
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class SpaceError(ValueError):
    """A search-space entry is malformed (the message names the entry and the problem)."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter.

    Attributes:
        path: Hydra override path, possibly with ``{strategy}``; also the Optuna parameter name.
        type: ``float``, ``int`` or ``categorical``.
        low: lower bound (float/int).
        high: upper bound, inclusive (float/int).
        log: log-uniform sampling (float/int; needs ``low > 0``).
        step: grid step (float/int; not with ``log``); None: continuous / step 1 for int.
        choices: values of a categorical.
        when: conditions ``{path: allowed values}`` on earlier parameters (or, when not searched,
            on the config's values); the parameter is searched only when all hold.
    """

    path: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Return the Optuna parameter name (the path as written)."""
        return self.path

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """Return the Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        assert self.low is not None and self.high is not None
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask ``trial`` for a value (``trial.suggest_*``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a possible value of this parameter."""
        if self.type == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        assert self.low is not None and self.high is not None
        return float(self.low) <= float(value) <= float(self.high)

    def resolved_path(self, strategy: str) -> str:
        """Return the override path with ``{strategy}`` replaced."""
        return self.path.replace(PLACEHOLDER, strategy)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _number(spec: Mapping[str, Any], key: str, where: str) -> float | int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(f"{where}: `{key}` must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"{where}: `{key}` must be finite, got {value!r}")
    return value


def _parse_one(raw: Any, k: int) -> ParamSpec:
    where = f"sweep.params[{k}]"
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{where}: expected a mapping with `path` and `type`, got {raw!r}")
    spec = dict(raw)
    path = spec.get("path")
    if not isinstance(path, str) or not _PATH.match(path):
        raise SpaceError(f"{where}: `path` must be a dotted config key, got {path!r}")
    where = f"{where} ({path})"
    kind = spec.get("type")
    if kind not in TYPES:
        raise SpaceError(f"{where}: unknown type {kind!r}; use one of {list(TYPES)}")
    unknown = set(spec) - _KEYS[kind]
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)} for type {kind}")
    when = _parse_when(spec.get("when"), where)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            raise SpaceError(f"{where}: `choices` must be a non-empty list, got {choices!r}")
        bad = [c for c in choices if not _scalar(c)]
        if bad:
            raise SpaceError(f"{where}: choices must be str/int/float/bool/null, got {bad}")
        if len({(type(c), c) for c in choices}) != len(choices):
            raise SpaceError(f"{where}: duplicated choices {list(choices)}")
        if path == STRATEGY_PATH and not all(isinstance(c, str) for c in choices):
            raise SpaceError(f"{where}: strategies are names (str), got {list(choices)}")
        return ParamSpec(path, kind, choices=tuple(choices), when=when)
    low, high = _number(spec, "low", where), _number(spec, "high", where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: `log` must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(spec, "step", where)
        if step <= 0:
            raise SpaceError(f"{where}: `step` must be > 0, got {step}")
        if log:
            raise SpaceError(f"{where}: `step` cannot be combined with `log: true`")
    if low > high:
        raise SpaceError(f"{where}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: `log: true` needs low > 0, got low={low}")
    if kind == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not float(value).is_integer():
                raise SpaceError(f"{where}: int parameter needs an integer `{key}`, got {value}")
        return ParamSpec(
            path, kind, int(low), int(high), log, int(step) if step else None, when=when
        )
    return ParamSpec(path, kind, float(low), float(high), log, step, when=when)


def _parse_when(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(f"{where}: `when` must be a mapping path -> value(s), got {raw!r}")
    out: dict[str, tuple[Any, ...]] = {}
    for key, allowed in raw.items():
        if not isinstance(key, str) or not _PATH.match(key) or PLACEHOLDER in key:
            raise SpaceError(f"{where}: `when` key must be a config path, got {key!r}")
        values = tuple(allowed) if isinstance(allowed, list | tuple) else (allowed,)
        if not values or not all(_scalar(v) for v in values):
            raise SpaceError(f"{where}: `when.{key}` must be scalar value(s), got {allowed!r}")
        out[key] = values
    return out


def parse_space(node: Any) -> list[ParamSpec]:
    """Parse ``sweep.params`` (a list of mappings) into :class:`ParamSpec` objects.

    Raises:
        SpaceError: unknown type or key, missing/non-numeric bounds, ``low > high``, ``log``
            with ``low <= 0``, empty or non-scalar choices, duplicated paths, a ``when`` on a
            parameter searched later, or a ``{strategy}`` path while ``sweep.strategy`` is
            searched after it.
    """
    if isinstance(node, DictConfig) or (node is not None and OmegaConf.is_config(node)):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, list | tuple) or not node:
        raise SpaceError(f"sweep.params must be a non-empty list of parameters, got {node!r}")
    specs: list[ParamSpec] = []
    for k, raw in enumerate(node):
        spec = _parse_one(raw, k)
        if spec.path in {s.path for s in specs}:
            raise SpaceError(f"sweep.params[{k}]: path {spec.path!r} is searched twice")
        specs.append(spec)
    paths = [s.path for s in specs]
    for k, spec in enumerate(specs):
        for key in spec.when:
            if key in paths and paths.index(key) > k:
                raise SpaceError(
                    f"sweep.params[{k}] ({spec.path}): `when` refers to {key!r}, which is "
                    "searched later; list it first"
                )
        if PLACEHOLDER in spec.path and STRATEGY_PATH in paths[k:]:
            raise SpaceError(
                f"sweep.params[{k}] ({spec.path}): {PLACEHOLDER} needs {STRATEGY_PATH} "
                "searched before it"
            )
    return specs


def _config_value(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path, default=None, throw_on_missing=False)


def _active(spec: ParamSpec, chosen: Mapping[str, Any], cfg: DictConfig) -> bool:
    for key, allowed in spec.when.items():
        value = chosen[key] if key in chosen else _config_value(cfg, key)
        if not any(type(value) is type(a) and value == a for a in allowed):
            return False
    return True


def suggest(trial: optuna.Trial, specs: Sequence[ParamSpec], cfg: DictConfig) -> dict[str, Any]:
    """Sample the active parameters of ``specs`` for ``trial``.

    Args:
        trial: the Optuna trial.
        specs: the parsed space.
        cfg: the base config (values of ``when`` conditions and ``sweep.strategy`` that are not
            searched).

    Returns:
        ``{resolved override path: value}`` in space order.
    """
    chosen: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for spec in specs:
        if not _active(spec, chosen, cfg):
            continue
        value = spec.suggest(trial)
        chosen[spec.path] = value
        strategy = str(chosen.get(STRATEGY_PATH, _config_value(cfg, STRATEGY_PATH)))
        out[spec.resolved_path(strategy)] = value
    return out


def default_params(specs: Sequence[ParamSpec], cfg: DictConfig) -> tuple[dict[str, Any], list]:
    """Return the config's own values of the searched parameters (for a baseline trial).

    Returns:
        ``(params, problems)``: Optuna params ``{name: value}`` for every active parameter whose
        configured value lies in its distribution, and a list of ``(name, value)`` that do not.
    """
    chosen: dict[str, Any] = {}
    problems: list[tuple[str, Any]] = []
    for spec in specs:
        if not _active(spec, chosen, cfg):
            continue
        strategy = str(chosen.get(STRATEGY_PATH, _config_value(cfg, STRATEGY_PATH)))
        value = _config_value(cfg, spec.resolved_path(strategy))
        if spec.contains(value):
            chosen[spec.path] = int(value) if spec.type == "int" else value
        else:
            problems.append((spec.name, value))
    return chosen, problems


def searched_strategies(specs: Sequence[ParamSpec], cfg: DictConfig) -> list[str]:
    """Return the strategies a sweep can fit: ``sweep.strategy`` and any searched choices."""
    strategies = [str(_config_value(cfg, STRATEGY_PATH))]
    for spec in specs:
        if spec.path == STRATEGY_PATH:
            strategies += [str(c) for c in spec.choices if str(c) not in strategies]
    return strategies


def check_paths(specs: Sequence[ParamSpec], cfg: DictConfig) -> None:
    """Check that every override path (for every possible strategy) exists in ``cfg``.

    Raises:
        SpaceError: naming the first path that is not a key of the composed config.
    """
    strategies = set(searched_strategies(specs, cfg))
    known = set(cfg.transfer.strategies) if "transfer" in cfg else set()
    unknown = sorted(s for s in strategies if s not in known)
    if unknown:
        raise SpaceError(
            f"sweep strategy {unknown} not in transfer.strategies {sorted(known)}: compose it "
            f"(`kappaflow sweep` adds the searched recipes of conf/transfer itself; for a "
            "params.yaml: `kappaflow config dump 'transfer=["
            + ",".join(sorted(known | strategies))
            + "]' > params.yaml`)"
        )
    for spec in specs:
        for strategy in sorted(strategies) if PLACEHOLDER in spec.path else [""]:
            path = spec.resolved_path(strategy)
            if OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=False) is _ABSENT:
                raise SpaceError(
                    f"sweep parameter path {path!r} is not a key of the composed config "
                    "(check the spelling; only existing keys can be searched)"
                )


_ABSENT = object()


def format_value(value: Any) -> str:
    """Render a value for a Hydra / ``load_params`` override (floats keep a decimal point)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # 1e-05 is a string in YAML 1.1: write 1.0e-05
            text = f"{mantissa}.0e{exponent}"
        return text
    text = str(value)
    return text if _BARE.match(text) and text not in ("null", "true", "false") else repr(text)


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """``{path: value}`` -> ``["path=value", ...]`` (Hydra override syntax)."""
    return [f"{path}={format_value(value)}" for path, value in params.items()]
