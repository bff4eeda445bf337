"""The ``register`` stage: the best transferred κ ensemble into the MLflow registry, gated.

1. Candidate: among the transfer strategies of the config (``registry.exclude_strategies``,
   default ``scratch``, are not transfer learning; strategies without exported fold models are
   skipped; ``features`` with a scikit-learn head exports its frozen encoder + regressor arrays,
   :mod:`kappaflow.models.sklearn_head`, like any other), the one with the lowest
   validation-row ``val_<registry.metric>_mean`` (CV log10 MAE on each fold's validation rows,
   never its test rows: :func:`select_candidate`) in
   ``models/finetune/<strategy>/<dataset>/cv.json`` for ``registry.dataset``; its ``folds/`` must
   hold one model per fold of cv.json (else the finetune run is incomplete or still running and
   the strategy is skipped). The gate then judges it on the test folds. Its ensemble is
   the fold models of the CV repeats ``registry.ensemble_repeats`` (default repeat 0: one model
   per fold), so its held-out error is exactly that CV error on the same dataset and splits.
2. The members, graph settings and training domain (elements, member-0 embeddings of every
   material of ``registry.dataset``, OOD threshold) are logged as one pyfunc model
   (:mod:`kappaflow.registry.pyfunc`) and registered as a new version of
   ``registry.model_name``, unless a version with the same ``ensemble_sha256`` exists (then that
   version is the candidate again).
3. Promotion by :func:`kappaflow.registry.promotion.decide`; aliases ``champion`` /
   ``challenger`` moved; decision and both metrics as version tags.
4. Writes ``models/champion.json`` (name, version, URIs, metric and ensemble digests of the
   champion: the DVC dependency of ``screen``, and what ``predict``/``screen`` verify the
   downloaded ensemble against, :mod:`kappaflow.registry.trust`) and
   ``reports/registry/decision.json`` (this run's decision) and the DVC metrics
   ``metrics/headline/register.json`` (candidate metric, version, promoted 0/1, gate 0/1).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.data.prepare import crystals_from_frame
from kappaflow.evaluation.calibration import Calibration
from kappaflow.evaluation.report import write_report
from kappaflow.io_utils import config_digest, write_json, write_metrics
from kappaflow.layout import baseline_dir, finetune_dir, interim_dir, load_prepared, project_root
from kappaflow.registry import promotion as P
from kappaflow.registry.domain import fit_domain
from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
from kappaflow.registry.pyfunc import log_ensemble_model, write_ensemble_dir
from kappaflow.registry.trust import DIR_SHA_TAG, ensemble_dir_sha256, ensemble_sha256
from kappaflow.tracking import start_stage_run
from kappaflow.tracking.git import git_info
from kappaflow.tracking.names import dataset_alias, run_label
from kappaflow.tracking.runs import experiment_name, log_artifact, tracking_cfg

log = logging.getLogger(__name__)

#: cv.json ``config`` keys that define the protocol (plus the dataset): compared via a digest.
PROTOCOL_KEYS = (
    "n_splits", "n_repeats", "seed", "val_fraction", "group_level", "max_folds", "n_rows"
)  # fmt: skip


@dataclass
class Candidate:
    """The ensemble proposed for registration.

    Attributes:
        strategy: transfer strategy (key of ``transfer.strategies``).
        dataset: κ dataset of the CV.
        metric: CV mean of the registry metric (log10 MAE, decades).
        metric_std: its std over folds.
        members: fold model files of the ensemble.
        protocol: the protocol settings read from cv.json.
        finetune_run_id: MLflow run of the finetune stage that wrote cv.json ("" if unknown).
        considered: validation-row score of every eligible strategy (what chooses among
            several); why others were skipped.
        cv: the strategy's cv.json record (per-fold metrics for the paired comparisons).
        selected_by: how it was chosen, in words.
    """

    strategy: str
    dataset: str
    metric: float
    metric_std: float
    members: list[Path]
    protocol: dict[str, Any]
    finetune_run_id: str = ""
    considered: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)
    selected_by: str = ""

    @property
    def protocol_digest(self) -> str:
        """Digest of dataset + protocol settings: metrics are comparable iff digests match."""
        return config_digest({"dataset": self.dataset, **self.protocol})


def _members(folds: Path, repeats: list[int]) -> list[Path]:
    files = []
    for r in repeats:
        files += sorted(
            folds.glob(f"repeat{r}-fold*.pt"), key=lambda p: int(p.stem.split("fold")[1])
        )
    return files


def select_candidate(cfg: DictConfig) -> Candidate:
    """Pick the transferred strategy to register on ``registry.dataset``.

    Eligible: a transfer strategy of the config (not in ``registry.exclude_strategies``) whose
    cv.json has the metric and one exported model per fold. With one eligible strategy, that one.
    With several, the one with the lowest **validation-row** score
    (``selection.val_<metric>_mean`` of cv.json: each fold's validation rows, carved out of its
    training part); the test folds never choose, since the gate's paired test on them would
    then be biased towards the luckiest strategy. An eligible strategy without that score
    (a cv.json written before it was recorded, or ``evaluation.val_fraction`` null) is left out
    with the reason.

    Raises:
        ValueError: ``registry.dataset`` is not one of ``evaluation.datasets``, or several
            strategies are eligible and none has a validation-row score.
        FileNotFoundError: no strategy has a cv.json and fold models for the dataset.
    """
    reg = cfg.registry
    dataset = str(reg.dataset)
    if dataset not in cfg.evaluation.datasets:
        raise ValueError(
            f"registry.dataset {dataset!r} is not an evaluation dataset "
            f"({list(cfg.evaluation.datasets)}): its CV metric would be stale or missing"
        )
    metric_key = f"{reg.metric}_mean"
    repeats = [int(r) for r in reg.ensemble_repeats]
    excluded = {str(s) for s in reg.exclude_strategies}
    base = project_root() / cfg.paths.models_dir / "finetune"
    considered: dict[str, Any] = {}
    eligible: list[tuple[Candidate, float]] = []
    for key, s_cfg in cfg.transfer.strategies.items():
        key = str(key)
        if key in excluded or str(s_cfg.get("name", key)) in excluded:
            considered[key] = "excluded (not transfer learning)"
            continue
        out = base / key / dataset
        cv_path = out / "cv.json"
        if not cv_path.is_file():
            considered[key] = f"no {cv_path.relative_to(project_root())}"
            continue
        cv = json.loads(cv_path.read_text())
        value = (cv.get("summary") or {}).get(metric_key)
        members = _members(out / "folds", repeats)
        if cv.get("skipped") or value is None:
            considered[key] = f"no {metric_key} in cv.json ({cv.get('skipped', 'no summary')})"
            continue
        if not members:
            considered[key] = f"no fold models for repeats {repeats} in {out / 'folds'}"
            continue
        n_exported, n_folds = len(list((out / "folds").glob("repeat*-fold*.pt"))), len(cv["folds"])
        if n_exported != n_folds:  # a finetune run in progress, or a crashed one
            considered[key] = f"{n_exported} fold models but {n_folds} folds in cv.json"
            continue
        score = (cv.get("selection") or {}).get(f"val_{metric_key}")
        cand = Candidate(
            strategy=key,
            dataset=dataset,
            metric=float(value),
            metric_std=float(cv["summary"].get(f"{reg.metric}_std", float("nan"))),
            members=members,
            protocol={k: cv["config"].get(k) for k in PROTOCOL_KEYS},
            finetune_run_id=str(cv.get("mlflow_run_id") or ""),
            cv=cv,
        )
        eligible.append((cand, float("nan") if score is None else float(score)))
    if not eligible:
        raise FileNotFoundError(
            f"no transferred strategy with CV results and fold models on {dataset!r}: "
            f"{considered} (run `dvc repro finetune`)"
        )
    if len(eligible) == 1:
        best, score = eligible[0]
        considered[best.strategy] = score if np.isfinite(score) else "the only candidate"
        best.selected_by = "the only transferred strategy with CV results and fold models"
    else:
        scored = [(c, v) for c, v in eligible if np.isfinite(v)]
        for c, v in eligible:
            considered[c.strategy] = (
                v
                if np.isfinite(v)
                else f"no validation-row score (selection.val_{metric_key}) in its cv.json: "
                "not comparable without the test folds (re-run its finetune stage)"
            )
        if not scored:
            raise ValueError(
                f"{len(eligible)} transferred strategies on {dataset!r} and none has a "
                f"validation-row score (selection.val_{metric_key} in cv.json; it needs "
                "evaluation.val_fraction > 0): the test folds must not choose between them. "
                f"Re-run their finetune stages or keep one strategy ({considered})"
            )
        best, score = min(scored, key=lambda pair: pair[1])
        best.selected_by = (
            f"lowest validation-row {reg.metric} ({score:.4f}) of {len(scored)} strategies "
            "(each fold's validation rows; the test folds do not choose)"
        )
    best.considered = considered
    return best


def training_domain(cfg: DictConfig, ensemble: Any, dataset: str, quantile: float) -> Any:
    """Fit the OOD domain on every material of ``dataset`` (member-0 embeddings, elements)."""
    table = load_prepared(interim_dir(cfg, dataset))
    crystals = crystals_from_frame(table)
    embeddings = []
    for lo in range(0, len(crystals), 256):
        chunk = crystals[lo : lo + 256]
        ids = table["id"].iloc[lo : lo + 256].astype(str).tolist()
        forms = table["formula"].iloc[lo : lo + 256].astype(str).tolist()
        data = [ensemble.featurize(c, i, f) for c, i, f in zip(chunk, ids, forms, strict=True)]
        embeddings.append(ensemble.predict(data).embedding)
    return fit_domain(np.concatenate(embeddings), [c.numbers for c in crystals], quantile)


def _finetune_run_id(cfg: DictConfig, strategy: str, dataset: str) -> str:
    """Id of the newest ``finetune`` run of ``strategy`` on ``dataset`` ("" if none)."""
    import mlflow

    try:
        runs = mlflow.search_runs(
            experiment_names=[experiment_name(cfg, "transfer")],
            filter_string=(
                "tags.`kappaflow.stage` = 'finetune' AND "
                f"tags.strategy = '{strategy}' AND tags.dataset = '{dataset}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
    except mlflow.exceptions.MlflowException:
        return ""
    return runs[0].info.run_id if runs else ""


def _decision_sections(result: dict[str, Any]) -> list[str]:
    """Markdown of a decision: the one-line verdict, then each paired comparison."""
    rows = [
        f"| {name} | {c['candidate_mean']:.4f} | {c['reference_mean']:.4f} | "
        f"{c['mean_diff']:+.4f} | {c['se']:.4f} | {c['n_folds']} | {c['p_value']:.3g} |"
        for name, c in result["gate"]["comparisons"].items()
    ]
    table = (
        "| baseline | candidate | baseline | Δ (paired) | SE | folds | p |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    gate = result["gate"]
    return [
        f"**v{result['candidate_version']} ({result['candidate_strategy']} on "
        f"{result['dataset']})**: {result['decision']}",
        f"Candidate chosen by: {result.get('selected_by') or 'not recorded'}.",
        "Strategies considered (validation-row score, or why not eligible): "
        + "; ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
            for k, v in (result.get("considered") or {}).items()
        )
        + ".",
        f"Baseline gate: {'passed' if gate['passed'] else 'FAILED'}"
        f"{'' if gate['enforced'] else ' (not enforced by the config: smoke run)'}.",
        table,
    ]


def _champion_record(name: str, version: Any, metric: str, decision: str) -> dict[str, Any]:
    if version is None:  # no candidate has passed the gate yet
        return {"name": name, "version": None, "metric": metric, "no_champion": decision}
    tags = dict(version.tags)
    return {
        "name": name,
        "version": int(version.version),
        "uri": f"models:/{name}/{version.version}",
        "alias_uri": f"models:/{name}@champion",
        "source": version.source,
        "run_id": version.run_id,
        "metric": metric,
        "value": float(tags[metric]) if metric in tags else None,
        "dataset": tags.get("dataset"),
        "strategy": tags.get("strategy"),
        "protocol_digest": tags.get("protocol_digest"),
        "ensemble_sha256": tags.get("ensemble_sha256"),
        DIR_SHA_TAG: tags.get(DIR_SHA_TAG),
        "gated": tags.get("gated", "unknown"),
    }


def baseline_gate(cfg: DictConfig, cand: Candidate) -> P.Gate:
    """Paired comparison of the candidate with every baseline of ``registry.gate.baselines``.

    The baselines' CV records on the same folds are written by the ``evaluate`` stage
    (``models/baselines/<baseline>/<dataset>/cv.json``).
    """
    gate_cfg = cfg.registry.gate
    records: dict[str, dict[str, Any] | None] = {}
    for name in gate_cfg.baselines:
        path = baseline_dir(cfg, str(name), cand.dataset) / "cv.json"
        records[str(name)] = json.loads(path.read_text()) if path.is_file() else None
    return P.baseline_gate(
        cand.cv,
        records,
        alpha=float(gate_cfg.alpha),
        min_delta=float(cfg.registry.min_delta),
        metric=str(cfg.registry.metric),
        enforce=bool(gate_cfg.enforce),
    )


def _version_tags(cfg: DictConfig, cand: Candidate, sha: str) -> dict[str, str]:
    """Tags of the model version: candidate, CV metric ± std, protocol, digests, git commit."""
    reg = cfg.registry
    metric = str(reg.metric)
    return {
        "strategy": cand.strategy,
        "dataset": cand.dataset,
        "metric": metric,
        metric: f"{cand.metric:.6g}",
        f"{metric}_std": f"{cand.metric_std:.6g}",
        "protocol_digest": cand.protocol_digest,
        "protocol": json.dumps(cand.protocol, sort_keys=True),
        "ensemble_sha256": sha,
        "n_members": str(len(cand.members)),
        "ensemble_repeats": ",".join(str(r) for r in reg.ensemble_repeats),
        "git_commit": git_info(project_root()).commit or "unknown",
        "sigma": "std over members of log10 kappa (decades)",
        f"folds_{metric}": P.fold_record(cand.cv, metric),
    }


def _register_or_reuse(
    client: Any, cfg: DictConfig, cand: Candidate, graph: Any, tags: dict[str, str], run_id: str
) -> Any:
    """Return the version holding this ensemble: an existing one (same sha256) or a new one."""
    name, metric = str(cfg.registry.model_name), str(cfg.registry.metric)
    existing = P.find_version_by_tag(client, name, "ensemble_sha256", tags["ensemble_sha256"])
    if existing is not None:
        log.info("register: identical ensemble already registered as v%s", existing.version)
        return existing
    ensemble = KappaEnsemble.from_files(cand.members, graph, device="cpu")
    domain = training_domain(cfg, ensemble, cand.dataset, float(cfg.registry.domain_quantile))
    tags["ood_threshold"] = f"{domain.threshold:.6g}"
    tags["train_elements"] = str(len(domain.elements))
    with tempfile.TemporaryDirectory(prefix="kappaflow-ensemble-") as tmp:
        ens_dir = write_ensemble_dir(Path(tmp) / "ensemble", cand.members, graph, domain, tags)
        tags[DIR_SHA_TAG] = ensemble_dir_sha256(ens_dir)  # every file, domain included
        info = log_ensemble_model(
            ens_dir,
            metadata={"kappaflow": tags},
            composition=ensemble.input_kind == "composition",
        )
    return P.register_version(
        client,
        name,
        info.model_uri,
        run_id,
        tags,
        description=f"{cand.strategy} on {cand.dataset}: CV {metric} "
        f"{cand.metric:.4f} ± {cand.metric_std:.4f} ({len(cand.members)} fold models)",
    )


def _decide(
    client: Any,
    cfg: DictConfig,
    version: Any,
    champion: Any,
    challenger: Any,
    cand: Candidate,
    tags: dict[str, str],
    gate: P.Gate,
) -> tuple[Any, dict[str, Any]]:
    """Promotion decision for ``version``: baseline gate, then the champion; move the aliases."""
    name, metric = str(cfg.registry.model_name), str(cfg.registry.metric)
    if P.same_version(champion, version):
        decision = P.Decision(
            False,
            f"kept champion: candidate is the champion v{version.version} (same ensemble)",
            cand.metric,
            P.metric_of(champion, metric),
        )
        aliases = {
            P.CHAMPION: int(champion.version),
            P.CHALLENGER: int(challenger.version) if challenger else None,
        }
        return decision, aliases
    reason = None
    if champion is not None:
        reason = P.incomparable_reason(dict(version.tags) | tags, dict(champion.tags))
    decision = P.decide(
        cand.metric,
        P.metric_of(champion, metric),
        lower_is_better=True,
        incomparable=reason,
        min_delta=float(cfg.registry.min_delta),
        metric_name=metric,
        gate=gate,
        versus_champion=P.champion_comparison(cand.cv, champion, metric),
        alpha=float(cfg.registry.gate.alpha),
    )
    aliases = P.apply_decision(client, name, version, champion, challenger, decision, True, metric)
    return decision, aliases


def _log_decision(
    name: str, version: Any, decision: Any, record: dict[str, Any], metric: str, files: tuple
) -> None:
    """Decision as tags and metrics of the active MLflow run; the decision files as artifacts."""
    import mlflow

    mlflow.set_tags(
        {
            "registry.model": name,
            "registry.version": str(version.version),
            "registry.decision": decision.reason,
            "registry.promoted": str(bool(decision.promote)).lower(),
            "registry.champion_version": str(record["version"] or 0),
        }
    )
    mlflow.log_metrics(
        {
            f"candidate_{metric}": decision.candidate_metric,
            **(
                {f"champion_{metric}_before": decision.champion_metric}
                if decision.champion_metric is not None
                else {}
            ),
        }
    )
    for f in files:
        log_artifact(f, "registry")


def register_stage(cfg: DictConfig) -> dict[str, Any]:
    """Register the best transferred ensemble and promote it if it beats the champion.

    Returns:
        The decision record (also written to ``reports/registry/decision.json``).

    Raises:
        RuntimeError: MLflow tracking is disabled (the registry lives in the tracking store).
    """
    from mlflow import MlflowClient

    if not tracking_cfg(cfg)["enabled"]:
        raise RuntimeError("the register stage needs MLflow tracking (tracking.enabled: true)")
    reg = cfg.registry
    name, metric = str(reg.model_name), str(reg.metric)
    root = project_root()
    cand = select_candidate(cfg)
    log.info(
        "register: candidate %s on %s, %s = %.4f ± %.4f, %d members (considered: %s)",
        cand.strategy, cand.dataset, metric, cand.metric, cand.metric_std, len(cand.members),
        cand.considered,
    )  # fmt: skip
    mn = cfg.graphs.get("max_neighbors")
    graph = GraphSettings(float(cfg.graphs.cutoff), None if mn is None else int(mn))
    quantile = float(reg.domain_quantile)
    sha = ensemble_sha256(cand.members, {"graph": graph.to_dict(), "quantile": quantile})
    tags = _version_tags(cfg, cand, sha)
    oof = finetune_dir(cfg, cand.strategy, cand.dataset) / "predictions.csv"
    if oof.is_file():  # stored in ensemble.json too: the intervals predict/screen print
        tags |= Calibration.from_predictions(pd.read_csv(oof)).to_tags()
    else:
        log.warning("register: no %s: the ensemble is registered without calibration", oof)
    gate = baseline_gate(cfg, cand)
    tags["gated"] = gate.tag
    log.log(logging.INFO if gate.passed else logging.WARNING, "register: gate: %s", gate.reason)
    with start_stage_run(
        cfg,
        "register",
        run_name=run_label(
            "register", dataset_alias(cand.dataset, cfg.tracking.get("aliases")), cand.strategy
        ),
        dvc_stage="register",
        tags={"strategy": cand.strategy, "dataset": cand.dataset},
        params=["registry", "graphs", "seed"],
    ) as run:
        assert run is not None
        client = MlflowClient()
        tags["finetune_run_id"] = cand.finetune_run_id or _finetune_run_id(
            cfg, cand.strategy, cand.dataset
        )
        champion = P.version_by_alias(client, name, P.CHAMPION)
        challenger = P.version_by_alias(client, name, P.CHALLENGER)
        version = _register_or_reuse(client, cfg, cand, graph, tags, run.info.run_id)
        client.set_model_version_tag(name, version.version, "gated", gate.tag)
        decision, aliases = _decide(client, cfg, version, champion, challenger, cand, tags, gate)
        log.info("register: v%s %s; aliases %s", version.version, decision.reason, aliases)
        champ = P.version_by_alias(client, name, P.CHAMPION)
        record = _champion_record(name, champ, metric, decision.reason)
        result = {
            "model_name": name,
            "candidate_version": int(version.version),
            "candidate_strategy": cand.strategy,
            "dataset": cand.dataset,
            "promoted": decision.promote,
            "decision": decision.reason,
            f"candidate_{metric}": decision.candidate_metric,
            f"champion_{metric}_before": decision.champion_metric,
            "aliases": aliases,
            "considered": cand.considered,
            "selected_by": cand.selected_by,
            "gate": {
                "passed": gate.passed,
                "enforced": gate.enforced,
                "reason": gate.reason,
                "comparisons": {k: c.to_dict() for k, c in gate.comparisons.items()},
            },
            "champion": record,
        }
        write_json(root / str(reg.champion_file), record)
        decision_file = root / cfg.paths.reports_dir / "registry" / "decision.json"
        write_json(decision_file, result)
        write_metrics(
            root / cfg.paths.metrics_dir / "headline" / "register.json",
            {
                f"candidate_{metric}": decision.candidate_metric,
                "candidate_version": int(version.version),
                "promoted": bool(decision.promote),
                "gate_passed": bool(gate.passed),
            },
        )
        report = write_report(
            decision_file.with_suffix(".md"), *_decision_sections(result), title="Registry decision"
        )
        files = (decision_file, report, root / str(reg.champion_file))
        _log_decision(name, version, decision, record, metric, files)
    print(f"register: v{version.version} ({cand.strategy}): {decision.reason}")
    return result


def main() -> None:
    """Run the DVC stage ``register`` from the command line: ``pipelines/register.py``.

    Usage: ``python pipelines/register.py [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`register_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(register_stage)
