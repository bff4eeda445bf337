"""The DVC surface a reviewer reads: headline metrics, declared params, plot templates.

* ``metrics:`` files hold numbers only (:func:`kappaflow.io_utils.headline_metrics`), in
  ``metrics/headline/`` (or a stage's ``headline.json``); rich records are plain ``outs:``.
* Declared params stay small: the leaves ``dvc exp show --param-deps`` would show (every stage's
  ``params:``, foreach/matrix expanded, resolved against params.yaml) fit :data:`PARAM_COLUMNS_MAX`,
  and no per-dataset stage declares a whole dataset card (descriptions, citations, sources).
* The DVC plot templates draw y = x and a colour per strategy; every template named exists.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kappaflow.io_utils import headline_metrics, write_metrics

ROOT = Path(__file__).resolve().parents[1]

#: Budget of ``dvc exp show --param-deps`` param columns: 546 measured. The per-dataset stages
#: declare only the card keys they read; the whole-``datasets`` declarations of the multi-dataset
#: stages (evaluate, extrapolate, pretrain_size, screen, domain: 241 leaves) are most of it. A
#: stage that declares another big subtree whole (``sweep``, ``tracking``...) fails here.
PARAM_COLUMNS_MAX = 650  # + datasets.<name>.max_rows (14 cards: smoke sampling) + phonons (32)
#                         + trainer.strategy, phonons.kappa method / lbte_max_gb (641 today)
#                         + transfer.strategies.stack (10 leaves) + verify (25: its κ settings
#                         are a resolved copy of phonons.kappa.settings, 14)
#: Keys of a dataset card that only document it: no stage output depends on them.
CARD_DOC_KEYS = ("description", "citation", "fidelity", "role", "temperature_k", "name")


def _dvc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def _params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def _entries(items: Any) -> list[str]:
    out = []
    for item in items or ():
        out.extend([item] if isinstance(item, str) else [str(k) for k in item])
    return out


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _leaves(node: Any, prefix: str) -> set[str]:
    if isinstance(node, dict) and node:
        return {leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}")}
    return {prefix}


def _instances(name: str, stage: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``${key}``/``${item...}`` bindings of every instance of a stage (DVC foreach/matrix)."""
    if "foreach" in stage:
        items = _lookup(params, stage["foreach"].strip("${}"))
        pairs = items.items() if isinstance(items, dict) else [(i, i) for i in items]
        return [{"key": k, "item": v} for k, v in pairs]
    if "matrix" in stage:
        axes = {k: _lookup(params, v.strip("${}")) for k, v in stage["matrix"].items()}
        combos: list[dict[str, Any]] = [{}]
        for axis, values in axes.items():
            combos = [{**c, axis: v} for c in combos for v in values]
        return [{"item": c} for c in combos]
    return [{}]


def _resolve(text: str, binding: dict[str, Any], params: dict[str, Any]) -> str:
    def one(match: re.Match[str]) -> str:
        path = match.group(1).split(".")
        if path[0] in binding:
            value = binding[path[0]]
            for part in path[1:]:
                value = value[part]
            return str(value)
        return str(_lookup(params, match.group(1)))

    return re.sub(r"\$\{([^}]*)\}", one, text)


def declared_param_columns(dvc: dict[str, Any], params: dict[str, Any]) -> dict[str, set[str]]:
    """Stage -> the params.yaml leaves its ``params:`` declare (all instances together)."""
    out: dict[str, set[str]] = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for binding in _instances(name, stage, params):
            for entry in _entries(body.get("params")):
                key = _resolve(entry, binding, params)
                out.setdefault(name, set()).update(_leaves(_lookup(params, key), key))
    return out


def test_param_columns_fit_the_budget() -> None:
    columns = declared_param_columns(_dvc(), _params())
    total = set().union(*columns.values())
    by_stage = {k: len(v) for k, v in sorted(columns.items(), key=lambda kv: -len(kv[1]))}
    assert len(total) <= PARAM_COLUMNS_MAX, f"{len(total)} param columns; per stage {by_stage}"


def test_per_dataset_stages_do_not_declare_whole_cards() -> None:
    columns = declared_param_columns(_dvc(), _params())
    for name, stage in _dvc()["stages"].items():
        if "foreach" not in stage and "matrix" not in stage:
            continue
        doc = {c for c in columns.get(name, ()) if c.startswith("datasets.")}
        doc = {c for c in doc if c.split(".")[2] in CARD_DOC_KEYS}
        assert not doc, f"{name} declares documentation keys of a card: {sorted(doc)[:5]}"


def test_checker_counts_a_whole_subtree() -> None:
    dvc = _dvc()
    before = len(set().union(*declared_param_columns(dvc, _params()).values()))
    dvc["stages"]["prepare"]["do"]["params"].append("sweep")
    after = len(set().union(*declared_param_columns(dvc, _params()).values()))
    assert after - before == len(_leaves(_params()["sweep"], "sweep")) > 0


# ---------------------------------------------------------------------------------------------
# metrics: headline files, numbers only
# ---------------------------------------------------------------------------------------------


def _metric_paths(dvc: dict[str, Any]) -> list[str]:
    return [m for s in dvc["stages"].values() for m in _entries(s.get("do", s).get("metrics"))]


#: Metrics files outside ``metrics/headline/`` that hold numbers only, and why.
NUMERIC_METRICS_OK = {
    "metrics/domain.json": "domain stage: recall / false_reject per method, set, signal only",
}


def test_metrics_are_headline_files() -> None:
    paths = _metric_paths(_dvc())
    assert paths
    bad = [
        p
        for p in paths
        if not (p.startswith("metrics/headline/") or p.endswith("headline.json"))
        and p not in NUMERIC_METRICS_OK
    ]
    assert not bad, f"declare rich records as outs, a headline file as metrics: {bad}"


def test_metrics_files_on_disk_hold_numbers_only() -> None:
    found = sorted((ROOT / "metrics" / "headline").glob("*.json"))
    found += [p for p in [ROOT / "reports/screen/headline.json"] if p.is_file()]
    for path in found:
        data = json.loads(path.read_text())
        assert headline_metrics(data) == data, path  # flat, numbers only


def test_headline_metrics_numbers_only(tmp_path: Path) -> None:
    flat = headline_metrics({"a": {"b": 1, "c": 2.5, "nan": math.nan, "none": None}, "ok": True})
    assert flat == {"a.b": 1, "a.c": 2.5, "ok": 1}
    with pytest.raises(TypeError, match="a.name"):
        headline_metrics({"a": {"name": "paraisite_d1"}})
    with pytest.raises(TypeError):
        headline_metrics({"targets": ["kappa"]})
    path = write_metrics(tmp_path / "m.json", {"x": {"y": 3}})
    assert json.loads(path.read_text()) == {"x.y": 3}


def test_stage_headlines_are_numbers() -> None:
    from kappaflow.stages.evaluate import transfer_headline
    from kappaflow.stages.leakage import leakage_headline

    rows = [
        {"strategy": "baseline:median", "train_set": "d1", "log10_mae_mean": 0.5},
        {"strategy": "baseline:magpie_rf", "train_set": "d1", "log10_mae_mean": 0.3},
        {"strategy": "finetune", "train_set": "d1", "log10_mae_mean": 0.2, "log10_mae_std": 0.01},
    ]
    flat = headline_metrics(transfer_headline(rows))
    assert flat == {
        "finetune.d1.log10_mae_mean": 0.2,
        "finetune.d1.log10_mae_std": 0.01,
        "best_baseline.d1": 0.3,
    }
    summary = {
        "formula": {
            "a|b": {"shared_formulas": 3, "rows_a": 4, "rows_b": 3, "formulas": ["NaCl"]},
            "a|c": {"shared_formulas": 0, "rows_a": 0, "rows_c": 0, "formulas": []},
        }
    }
    assert headline_metrics(leakage_headline(summary)) == {
        "formula.overlapping_pairs": 1,
        "formula.shared_formulas": 3,
    }


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------


def _template(name: str) -> dict[str, Any]:
    return json.loads((ROOT / ".dvc" / "plots" / f"{name}.json").read_text(encoding="utf-8"))


def test_every_named_template_exists() -> None:
    for plot in _dvc()["plots"]:
        if isinstance(plot, dict):
            (spec,) = plot.values()
            name = spec.get("template")
            if name and name not in {"linear", "scatter", "simple", "bar_horizontal", "smooth"}:
                assert (ROOT / ".dvc" / "plots" / f"{name}.json").is_file(), name


def test_parity_template_has_diagonal_and_strategy_colour() -> None:
    t = _template("kappa_parity")
    assert "<DVC_METRIC_DATA>" in json.dumps(t)
    line, points = t["layer"]
    assert line["mark"]["type"] == "line"
    assert line["encoding"]["x"]["field"] == line["encoding"]["y"]["field"]  # y = x
    assert points["encoding"]["color"]["field"] == "strategy"
    for layer in (line, points):
        for axis in ("x", "y"):
            assert layer["encoding"][axis]["scale"]["type"] == "log"
    assert any("clamp(" in str(tr.get("calculate", "")) for tr in t["transform"])  # clipped


def test_strategy_bar_template_compares_experiments() -> None:
    t = _template("bar_log10_mae")
    bars = t["spec"]["layer"][0]["encoding"]
    assert bars["xOffset"]["field"] == "rev"  # one bar per experiment
    assert bars["color"]["field"] == "<DVC_METRIC_X>"


def test_plot_axes_are_named() -> None:
    for plot in _dvc()["plots"]:
        if isinstance(plot, dict):
            (spec,) = plot.values()
            assert spec.get("y_label") and spec.get("x_label"), plot


def test_plot_data_writers(tmp_path: Path) -> None:
    import pandas as pd

    from kappaflow.evaluation.plots import (
        PARITY_COLUMNS,
        STRATEGY_COLUMNS,
        parity_data,
        strategy_comparison_data,
    )

    preds = pd.DataFrame({"id": ["a", "b", "c"], "kappa_true": [1.0, 10.0, 5.0]})
    parity_data(
        {
            "scratch": preds.assign(kappa_pred=[1.2, 9.0, -1.0]),
            "finetune": preds.assign(kappa_pred=[1.0, 2.0, 3.0]),
        },
        tmp_path / "p.csv",
    )
    table = pd.read_csv(tmp_path / "p.csv")
    assert tuple(table.columns) == PARITY_COLUMNS
    assert len(table) == 5  # the non-positive prediction is left out (log axes)
    assert set(table.strategy) == {"scratch", "finetune"}
    results = pd.DataFrame(
        [{"strategy": "scratch", "train_set": "d1", "log10_mae_mean": 0.3, "log10_mae_std": 0.1}]
    )
    strategy_comparison_data(results, tmp_path / "s.csv")
    assert tuple(pd.read_csv(tmp_path / "s.csv").columns) == STRATEGY_COLUMNS
