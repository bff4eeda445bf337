import kappa_testkit as kt
import pytest
import torch
from torch import nn

from kappaflow.models import build_model
from kappaflow.training.module import KappaLightningModule, masked_mae, masked_mse
from kappaflow.training.target_transform import TargetTransform


def test_masked_mse_ignores_nan_and_balances_targets() -> None:
    pred = torch.zeros(4, 2, requires_grad=True)
    target = torch.tensor(
        [[1.0, float("nan")], [1.0, float("nan")], [1.0, float("nan")], [1.0, 4.0]]
    )
    loss = masked_mse(pred, target)
    assert loss.item() == pytest.approx((1.0 + 16.0) / 2)  # per-target means, then averaged
    loss.backward()
    assert torch.all(pred.grad[:3, 1] == 0) and torch.all(pred.grad[:, 0] != 0)
    empty = masked_mse(pred, torch.full((4, 2), float("nan")))
    assert empty.item() == 0.0 and empty.requires_grad
    mae = masked_mae(pred.detach(), torch.tensor([[1.0, float("nan")]] * 4))
    assert mae[0].item() == 1.0 and torch.isnan(mae[1])


def _module(**kw) -> KappaLightningModule:
    model = build_model(kt.TINY_CGCNN, 1)
    return KappaLightningModule(model, TargetTransform(["log10"], ["kappa"]), **kw)


def test_param_groups_encoder_lr_mult_and_freeze() -> None:
    m = _module(lr=1e-3, encoder_lr_mult=0.1)
    groups = {g["name"]: g for g in m.param_groups()}
    assert groups["encoder"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == 1e-3
    n_enc = sum(p.numel() for p in m.model.encoder.parameters())
    assert sum(p.numel() for p in groups["encoder"]["params"]) == n_enc
    frozen = _module(encoder_lr_mult=0.0)
    names = [g["name"] for g in frozen.param_groups()]
    assert names == ["head"]
    assert not any(p.requires_grad for p in frozen.model.encoder.parameters())
    with pytest.raises(ValueError):
        _module(scheduler={"name": "step"})


def test_split_metrics_units() -> None:
    tf = TargetTransform(["log10", "none"], ["kappa", "e_form"], mean=[1.0, 0.0], std=[2.0, 1.0])
    m = KappaLightningModule(nn.Linear(1, 2), tf)
    y = torch.tensor([[10.0, 0.5], [100.0, float("nan")]])
    pred_z = tf(torch.tensor([[100.0, 1.0], [100.0, 3.0]]))
    out = m.split_metrics("val", pred_z, y)
    assert out["val/kappa/mae"].item() == pytest.approx(45.0)  # W/m/K: (90 + 0) / 2
    assert out["val/kappa/mae_log10"].item() == pytest.approx(0.5)
    assert out["val/e_form/mae"].item() == pytest.approx(0.5)  # NaN row ignored
    assert "val/e_form/mae_log10" not in out


def test_predict_step_returns_ids_and_original_units() -> None:
    from torch_geometric.data import Batch

    graphs = kt.tiny_graphs(4)
    tf = TargetTransform(["log10"], ["kappa"], mean=[1.0], std=[0.5])
    m = KappaLightningModule(build_model(kt.TINY_CGCNN, 1), tf).eval()
    batch = Batch.from_data_list(graphs)
    with torch.no_grad():
        out = m.predict_step(batch, 0)
        z = m.model(batch)
    assert out["ids"] == ["m-0", "m-1", "m-2", "m-3"]
    assert torch.allclose(out["pred"], 10 ** (z * 0.5 + 1.0))
