"""The ``pretrain_size`` stage: κ error of transfer vs the size of the pretraining set (TL-CGCNN).

Lee & Asahi (Comput. Mater. Sci. 190, 110314, 2021) found the gain of a CGCNN pretrained on
formation energies grows with the pretraining-set size. Here the recipe
``evaluation.pretrain_size.strategy`` (default ``finetune``) is cross-validated on each dataset
of ``evaluation.pretrain_size.datasets`` with the encoder of each pretrain run listed in
``evaluation.pretrain_size.runs`` (fraction of the pretraining train split -> run; the runs
``cgcnn_f10``/``cgcnn_f30`` use ``pretrain.runs.<run>.fraction``). Fraction 0 (run ``null``) is
the ``scratch`` recipe: same architecture and trainer, random weights. Every point goes through
the same repeated grouped k-fold as the transfer table (so the 100 % point is the ``finetune``
row of that table, reused from the fold cache when the settings agree).

Outputs: ``reports/pretrain_size.md``, ``metrics/pretrain_size.json`` (full record), the DVC
metrics ``metrics/headline/pretrain_size.json`` (log10-MAE mean per dataset/fraction),
``plots/pretrain_size/pretrain_size.png`` (log10-MAE ± std vs fraction, one line per dataset).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from kappaflow.evaluation.plots import message_plot, size_study_plot
from kappaflow.evaluation.protocol import cross_validate, dataset_evaluation, protocol_settings
from kappaflow.evaluation.report import write_report
from kappaflow.io_utils import write_metrics
from kappaflow.layout import kappa_table, project_root
from kappaflow.stages.common import finish_study
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.names import dataset_alias
from kappaflow.transfer.fit_predict import build_fit_predict, fold_cache_dir, with_strategy

log = logging.getLogger(__name__)


#: The report's text when ``evaluation.pretrain_size.datasets`` is empty (the default profile).
NOT_CONFIGURED = (
    "Not run: `evaluation.pretrain_size.datasets` is empty in this configuration. The default "
    "profile keeps `dvc repro` under an hour on 2 CPU cores; this study fine-tunes CGCNN on 15 "
    "folds per dataset at four pretraining fractions (a GPU job): `+experiment=paper`, or "
    "`-S evaluation=full` on a CPU."
)


def size_points(cfg: DictConfig) -> list[tuple[float, str | None]]:
    """``[(fraction, pretrain run or None), ...]`` sorted by fraction; validates the runs.

    Raises:
        ValueError: a fraction outside [0, 1], fraction 0 with a run, or a run that is not a key
            of ``pretrain.runs``.
    """
    points = []
    for key, run in cfg.evaluation.pretrain_size.runs.items():
        frac = float(key)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"pretrain_size: fraction {key!r} outside [0, 1]")
        if (frac == 0.0) != (run is None):
            raise ValueError(f"pretrain_size: fraction {key} needs run null iff it is 0, got {run}")
        if run is not None and run not in cfg.pretrain.runs:
            raise ValueError(
                f"pretrain_size: {run!r} is not a pretrain run ({list(cfg.pretrain.runs)})"
            )
        if run is not None:
            used = cfg.pretrain.runs[run].get("fraction")
            used = cfg.pretrain.get("fraction") if used is None else used
            if used is not None and abs(float(used) - frac) > 1e-9:
                log.warning(
                    "pretrain_size: point %s is run %r, which pretrains on %.0f %% of the split "
                    "(pretrain.fraction / its recipe): its row is labelled by the key",
                    key,
                    run,
                    100 * float(used),
                )
        points.append((frac, None if run is None else str(run)))
    return sorted(points)


def pretrain_size_stage(cfg: DictConfig) -> dict[str, Any]:
    """Cross-validate the recipe at every pretraining fraction; write table, plot and metrics."""
    root = project_root()
    sc = cfg.evaluation.pretrain_size
    strategy = str(sc.strategy)
    points = size_points(cfg)
    plots = root / cfg.paths.plots_dir / "pretrain_size"
    results: dict[str, Any] = {}
    lines = [
        f"Recipe `{strategy}` (fraction 0: `scratch`), repeated grouped k-fold as in the transfer "
        "table; cells: log10-MAE mean ± std over folds (MAPE %).",
        "",
        "| dataset | " + " | ".join(f"{f:.0%} ({r or 'no pretraining'})" for f, r in points) + " |",
        "|---|" + "---|" * len(points),
    ]
    stage = "pretrain_size"
    aliases = cfg.tracking.get("aliases")
    with start_stage_run(
        cfg,
        stage,
        run_name=stage,
        dvc_stage=stage,
        params=["evaluation.pretrain_size", f"transfer.strategies.{strategy}", "seed"],
    ) as run:
        means: dict[str, list[float]] = {}
        stds: dict[str, list[float]] = {}
        for dataset in sc.datasets:
            table, _ = kappa_table(cfg, dataset)
            cells = []
            for frac, pre in points:
                name = "scratch" if pre is None else strategy
                s_cfg = (
                    with_strategy(cfg, name)
                    if pre is None
                    else with_strategy(cfg, name, pretrained=pre)
                )
                work = fold_cache_dir(s_cfg, name, dataset)
                fit_predict = build_fit_predict(s_cfg, name, dataset, table, work)
                ev = dataset_evaluation(cfg.evaluation, dataset)
                res = cross_validate(table, fit_predict, **protocol_settings(ev), progress=True)
                summ = res.summary
                results[f"{dataset}/{frac:g}"] = {
                    "fraction": frac,
                    "pretrain_run": pre,
                    "recipe": name,
                    **{k: v for k, v in summ.items() if k.endswith(("_mean", "_std"))},
                }
                means.setdefault(dataset, []).append(float(summ["log10_mae_mean"]))
                stds.setdefault(dataset, []).append(float(summ["log10_mae_std"]))
                cells.append(
                    f"{summ['log10_mae_mean']:.3f} ± {summ['log10_mae_std']:.3f} "
                    f"({summ['mape_mean']:.0f} %)"
                )
                log.info(
                    "pretrain_size %s %s: log10-MAE %.3f", dataset, frac, summ["log10_mae_mean"]
                )
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
        if sc.datasets:
            plot = size_study_plot(
                [f for f, _ in points],
                means,
                stds,
                plots / "pretrain_size.png",
                xlabel="fraction of the pretraining set (MP e_form + gap)",
                ylabel="κ log10-MAE (held-out folds)",
                title=f"TL-CGCNN: {strategy} vs pretraining-set size",
            )
        else:
            lines = [NOT_CONFIGURED]
            plot = message_plot(plots / "pretrain_size.png", NOT_CONFIGURED)
        report = write_report(
            root / cfg.paths.reports_dir / "pretrain_size.md",
            "\n".join(lines),
            title="Pretraining-set size study (TL-CGCNN)",
        )
        write_metrics(
            root / cfg.paths.metrics_dir / "headline" / "pretrain_size.json",
            {key: {"log10_mae_mean": r.get("log10_mae_mean")} for key, r in results.items()},
        )
        finish_study(
            run,
            report,
            root / cfg.paths.metrics_dir / "pretrain_size.json",
            results,
            [plot],
            stage,
            mlflow_metrics=(
                (
                    {
                        f"{dataset_alias(key.split('/')[0], aliases)}_log10_mae_mean": r[
                            "log10_mae_mean"
                        ]
                    },
                    int(round(100 * r["fraction"])),
                )
                for key, r in results.items()
            ),
        )
    return results


def main() -> None:
    """Run the DVC stage ``pretrain_size`` from the command line: ``pipelines/pretrain_size.py``.

    Usage: ``python pipelines/pretrain_size.py [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`pretrain_size_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(pretrain_size_stage)
