from pathlib import Path

import kappa_testkit as kt
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kappaflow.layout import project_root
from kappaflow.models import build_model
from kappaflow.training import (
    KappaLightningModule,
    TargetTransform,
    load_model,
    predict,
    resolve_cfg,
    save_model,
)
from kappaflow.training.trainer import DEFAULTS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run1")
    return out, kt.run_training(out, kt.trainer_cfg(max_epochs=3))


def test_fit_writes_checkpoints_and_metrics(trained) -> None:
    out, res = trained
    assert res.epochs_run == 3 and res.first_epoch == 0 and res.resumed_from is None
    assert res.last_ckpt == out / "checkpoints" / "last.ckpt" and res.last_ckpt.is_file()
    assert res.best_ckpt is not None and res.best_ckpt.name.startswith("best-epoch=")
    assert res.val_metrics["val/loss"] == pytest.approx(res.best_val_loss)
    for key in ("test/loss", "test/kappa/mae", "test/kappa/mae_log10", "test/mae_std"):
        assert np.isfinite(res.test_metrics[key])


def test_two_seeded_runs_are_identical(trained, tmp_path: Path) -> None:
    _, first = trained
    second = kt.run_training(tmp_path, kt.trainer_cfg(max_epochs=3))
    assert kt.result_summary(second) == kt.result_summary(first)
    assert kt.state_equal(
        second.trainer.lightning_module.state_dict(), first.trainer.lightning_module.state_dict()
    )


def test_checkpoints_load_weights_only_and_reproduce_predictions(trained) -> None:
    _, res = trained
    module = res.trainer.lightning_module
    graphs = kt.tiny_graphs(40)
    ids, ref = predict(module.model, module.transform, graphs, batch_size=16)
    for path in (res.best_ckpt, res.last_ckpt):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(ckpt["hyper_parameters"], dict)
    ckpt = torch.load(res.best_ckpt, map_location="cpu", weights_only=True)
    fresh = KappaLightningModule(
        build_model(kt.TINY_CGCNN, 1), TargetTransform(["log10"], ["kappa"])
    )
    fresh.load_state_dict(ckpt["state_dict"])
    assert torch.equal(fresh.transform.mean, module.transform.mean)
    ids2, pred = predict(fresh.model, fresh.transform, graphs, batch_size=7)
    assert ids2 == ids == [f"m-{i}" for i in range(40)]
    np.testing.assert_array_equal(pred, ref)
    assert pred.shape == (40, 1) and (pred > 0).all()  # κ in W/m/K


def test_export_round_trip(trained, tmp_path: Path) -> None:
    _, res = trained
    module = res.trainer.lightning_module
    path = save_model(
        tmp_path / "model.pt",
        module.model,
        module.transform,
        OmegaConf.create(kt.TINY_CGCNN),
        {"dataset": "tiny", "metrics": res.test_metrics, "seed": np.int64(7)},
    )
    payload = torch.load(path, weights_only=True)
    assert set(payload) >= {"state_dict", "transform", "model_cfg", "n_targets", "target_names"}
    model, tf, info = load_model(path)
    assert info["target_names"] == ["kappa"] and info["meta"]["seed"] == 7
    graphs = kt.tiny_graphs(12)
    _, a = predict(model, tf, graphs)
    _, b = predict(module.model, module.transform, graphs)
    np.testing.assert_array_equal(a, b)


def test_early_stopping_stops(tmp_path: Path) -> None:
    cfg = kt.trainer_cfg(
        max_epochs=30, early_stopping={"patience": 2}, optim={"lr": 0.0}, scheduler={"name": "none"}
    )
    res = kt.run_training(tmp_path, cfg, n=20)
    assert res.stopped_early and res.epochs_run == 3  # epoch 0 sets the best, 2 more without gain


def test_resolve_cfg_auto_on_cpu() -> None:
    cfg = resolve_cfg({"accelerator": "auto", "precision": "auto", "deterministic": "auto"})
    if not torch.cuda.is_available():
        assert (cfg["accelerator"], cfg["precision"], cfg["deterministic"]) == (
            "cpu",
            "32-true",
            True,
        )


def test_trainer_config_files_match_defaults() -> None:
    conf = project_root() / "conf" / "trainer"
    default = OmegaConf.to_container(OmegaConf.load(conf / "default.yaml"))
    # the code-side fallbacks mirror conf (the owner) value for value; conf's seed is ${seed}
    assert default.pop("seed") == "${seed}"
    assert default == {k: v for k, v in DEFAULTS.items() if k != "seed"}
    for name in ("cpu", "gpu"):
        override = OmegaConf.to_container(OmegaConf.load(conf / f"{name}.yaml"))
        assert override["defaults"] == ["default", "_self_"]
        assert set(override) - {"defaults"} <= set(DEFAULTS)
