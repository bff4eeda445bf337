import math

import pytest
import torch

from kappaflow.training.target_transform import TargetTransform


def _y() -> torch.Tensor:
    return torch.tensor(
        [[1.0, -0.5], [10.0, float("nan")], [100.0, 0.25], [0.5, 1.5], [1000.0, 2.0]]
    )


def test_round_trip_keeps_values_and_nans() -> None:
    y = _y()
    tf = TargetTransform.fit(y, ["log10", "none"], ["kappa", "e_form"])
    z = tf(y)
    assert torch.isnan(z[1, 1]) and torch.isfinite(z[[0, 2, 3, 4]]).all()
    back = tf.inverse(z)
    assert torch.allclose(back[~torch.isnan(y)], y[~torch.isnan(y)], rtol=1e-5)
    assert torch.isnan(back[1, 1])
    # log10 column is standardized on the log scale
    assert math.isclose(float(tf.transform(y)[2, 0]), 2.0)


def test_stats_come_from_train_rows_only_and_are_nan_aware() -> None:
    y = _y()
    train = [0, 1, 2]
    tf = TargetTransform.fit(y[train], ["log10", "none"])
    assert tf.mean[0].item() == pytest.approx(1.0)  # mean of log10(1, 10, 100)
    assert tf.std[0].item() == pytest.approx(math.sqrt(2 / 3))
    assert tf.mean[1].item() == pytest.approx((-0.5 + 0.25) / 2)  # NaN row ignored
    full = TargetTransform.fit(y, ["log10", "none"])
    assert full.mean[0].item() != pytest.approx(tf.mean[0].item())
    z_train = tf(y[train])
    assert torch.nanmean(z_train[:, 0]).abs() < 1e-6


def test_degenerate_and_invalid_targets() -> None:
    tf = TargetTransform.fit(torch.tensor([[3.0], [3.0]]), ["none"])
    assert tf.std.item() == 1.0 and tf.mean.item() == 3.0
    with pytest.raises(ValueError, match="> 0"):
        TargetTransform.fit(torch.tensor([[1.0], [0.0]]), ["log10"])
    with pytest.raises(ValueError, match="unknown"):
        TargetTransform(["log"])


def test_dict_and_state_dict_round_trip() -> None:
    tf = TargetTransform.fit(_y(), ["log10", "none"], ["kappa", "e_form"])
    clone = TargetTransform.from_dict(tf.to_dict())
    assert clone.names == ["kappa", "e_form"] and clone.transforms == ["log10", "none"]
    assert torch.equal(clone.mean, tf.mean) and torch.equal(clone.std, tf.std)
    fresh = TargetTransform(["log10", "none"], ["kappa", "e_form"])
    fresh.load_state_dict(tf.state_dict())
    assert torch.equal(fresh(_y()).nan_to_num(), tf(_y()).nan_to_num())
    assert set(tf.state_dict()) == {"mean", "std"}
