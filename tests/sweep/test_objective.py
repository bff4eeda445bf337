"""Trial objective: held-out rows are never touched, fold reports prune, config sources agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kappaflow.config import compose, to_params_yaml
from kappaflow.sweep.objective import ConfigSource, CVObjective, FoldReporter, holdout_split
from kappaflow.sweep.settings import SweepSettings

LR = "transfer.strategies.finetune.trainer.optim.lr"


def _table(n_materials: int = 30) -> pd.DataFrame:
    """Synthetic κ rows; every material (reduced formula) appears twice (two polymorphs)."""
    formulas = [f"Na{k + 1}Cl" for k in range(n_materials)] * 2
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"m{k}" for k in range(len(formulas))],
            "formula": formulas,
            "spacegroup": [225] * n_materials + [221] * n_materials,
            "kappa": 10 ** rng.uniform(-0.5, 1.5, len(formulas)),
        }
    )


def test_holdout_split_is_grouped_and_reproducible():
    table = _table()
    search, held = holdout_split(table, 0.2, seed=42)
    assert len(np.intersect1d(search, held)) == 0 and len(search) + len(held) == len(table)
    assert set(table.formula[search]).isdisjoint(table.formula[held])
    assert 0.1 <= len(held) / len(table) <= 0.3
    shuffled = table.sample(frac=1.0, random_state=1).reset_index(drop=True)
    _, held2 = holdout_split(shuffled, 0.2, seed=42)
    assert set(shuffled.id[held2]) == set(table.id[held])  # same materials whatever the order
    assert len(holdout_split(table, 0.0, seed=42)[1]) == 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        holdout_split(table, 1.0, seed=42)


def test_inner_folds_never_touch_the_held_out_part():
    table = _table()
    seen: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    received: list[pd.DataFrame] = []
    configs = []

    def factory(cfg, strategy, dataset, part, work):
        received.append(part)
        configs.append((cfg, strategy, dataset, work))
        kappa = part["kappa"].to_numpy()

        def fit_predict(train_idx, val_idx, test_idx):
            for role, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
                seen[role] |= set(part["id"].iloc[idx])
            return kappa[test_idx] * 1.5

        return fit_predict

    source = ConfigSource(("sweep.holdout_fraction=0.25", "sweep.inner.n_splits=4"))
    base = source.load()
    settings = SweepSettings.from_cfg(base)
    objective = CVObjective(
        source,
        settings,
        base,
        table_loader=lambda cfg, name: (table, "kappa"),
        fit_predict_factory=factory,
    )
    study = optuna.create_study()
    trial = study.ask()
    value = objective(trial)

    _, held = holdout_split(table, 0.25, settings.seed)
    held_ids = set(table.id[held])
    assert held_ids and len(received) == 1 and held_ids.isdisjoint(received[0]["id"])
    assert held_ids.isdisjoint(seen["train"] | seen["val"] | seen["test"])
    assert seen["test"] == set(table.id) - held_ids  # every search row scored once
    assert value == pytest.approx(np.log10(1.5))  # constant factor 1.5: log10-MAE = log10 1.5
    assert len(trial.user_attrs["fold_log10_mae"]) == 4
    cfg, strategy, dataset, work = configs[0]
    assert (strategy, dataset) == ("finetune", "paraisite_d1")
    assert cfg.evaluation.trainer.progress_bar == "none"  # sweep.trainer merged for every fit
    assert OmegaConf.select(cfg, LR) == trial.params[LR]  # the trial's override is applied
    assert work.name == f"trial-{trial.number}" and "sweep" in work.parts


def test_fold_reporter_prunes_a_bad_trial():
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    )
    kappa = np.full(10, 2.0)
    good = lambda tr, va, te: kappa[te] * 1.1  # noqa: E731
    bad = lambda tr, va, te: kappa[te] * 100.0  # noqa: E731
    idx = np.arange(10)
    for _ in range(2):
        trial = study.ask()
        FoldReporter(trial, kappa, good)(idx, idx[:0], idx)
        study.tell(trial, 0.04)
    trial = study.ask()
    reporter = FoldReporter(trial, kappa, bad)
    with pytest.raises(optuna.TrialPruned, match="after inner fold 0"):
        reporter(idx, idx[:0], idx)
    assert trial.user_attrs["fold_log10_mae"] == [pytest.approx(2.0)]
    trial = study.ask()  # a trial as good as the others goes on
    FoldReporter(trial, kappa, good)(idx, idx[:0], idx)
    trial = study.ask()  # after its last fold a trial is finished: completed, never pruned
    FoldReporter(trial, kappa, bad, n_folds=1)(idx, idx[:0], idx)


def test_params_file_source_matches_hydra_source(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["transfer=[stack,finetune]"])))
    extra = [f"{LR}=1.0e-05", "transfer.strategies.finetune.trainer.batch_size=16"]
    from_params = ConfigSource((), str(params)).load(extra)
    from_hydra = ConfigSource(()).load(extra)
    for cfg in (from_params, from_hydra):
        assert cfg.transfer.strategies.finetune.trainer.optim.lr == 1e-05
        assert cfg.transfer.strategies.finetune.trainer.batch_size == 16
    with pytest.raises(ValueError, match="picks a config group"):
        ConfigSource(("sweep=strategy",), str(params)).load()
