"""DVC stage ``leakage``: the same material across datasets, as a map and per-pair counts.

Reads ``leakage`` (datasets, levels); writes ``data/leakage/map_<level>.csv`` and
``data/leakage/summary.json``. Pretraining excludes κ-set materials by the same rule.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from kappaflow.data.leakage import leakage_map, overlap_summary
from kappaflow.io_utils import write_json, write_metrics
from kappaflow.layout import interim_dir, load_prepared, project_root

log = logging.getLogger(__name__)


def leakage_stage(cfg: DictConfig) -> dict:
    """Write the cross-dataset leakage map and per-pair overlap counts (``data/leakage/``).

    Outputs ``map_<level>.csv`` (every row whose material occurs in another dataset: key,
    formula, spacegroup, dataset, id, datasets) and ``summary.json`` (per level and dataset pair:
    shared formulas and matching rows; formula lists only where they are short).
    """
    frames = {
        name: load_prepared(interim_dir(cfg, name))[["id", "formula", "spacegroup"]]
        for name in cfg.leakage.datasets
    }
    out = project_root() / "data" / "leakage"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for level in cfg.leakage.levels:
        table = leakage_map(frames, level=level)
        table.to_csv(out / f"map_{level.replace('+', '_')}.csv", index=False)
        pairs = overlap_summary(frames, level=level)
        for pair in pairs.values():
            formulas = pair.get("formulas", [])
            if isinstance(formulas, list) and len(formulas) > 50:
                pair["formulas"] = formulas[:50] + [f"... {len(formulas) - 50} more"]
        summary[level] = pairs
        log.info("leakage (%s): %d rows shared across datasets", level, len(table))
    write_json(out / "summary.json", summary, indent=1)
    write_metrics(
        project_root() / cfg.paths.metrics_dir / "headline" / "leakage.json",
        leakage_headline(summary),
    )
    return summary


def leakage_headline(summary: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Return the DVC metrics of ``leakage``: per match level, how much is shared at all.

    Args:
        summary: ``{level: {"a|b": {"shared_formulas": n, ...}}}`` (``summary.json``).

    Returns:
        ``{level: {"overlapping_pairs": pairs sharing >= 1 material, "shared_formulas": sum over
        pairs}}``: numbers only; the per-pair detail stays in ``summary.json`` (a plain out).
    """
    out: dict[str, dict[str, int]] = {}
    for level, pairs in summary.items():
        shared = [int(p.get("shared_formulas", 0) or 0) for p in pairs.values()]
        out[level] = {
            "overlapping_pairs": sum(1 for n in shared if n > 0),
            "shared_formulas": sum(shared),
        }
    return out


def main() -> None:
    """Run the DVC stage ``leakage`` from the command line: ``pipelines/leakage.py``.

    Usage: ``python pipelines/leakage.py [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`leakage_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(leakage_stage)
