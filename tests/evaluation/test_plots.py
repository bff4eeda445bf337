from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kappaflow.evaluation.plots import (
    learning_curve_plot,
    parity_plot,
    size_study_plot,
    strategy_comparison_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list(path.parent.glob(".*"))  # no temporary files left behind


def test_parity_plot_log_and_linear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = 10 ** rng.uniform(-1, 3, 50)
    out = parity_plot(
        y, y * 10 ** rng.normal(0, 0.2, 50), tmp_path / "a" / "parity.png", title="D2"
    )
    assert out == tmp_path / "a" / "parity.png"
    assert_png(out)
    e = rng.normal(size=30)
    assert_png(
        parity_plot(e, e + 0.1, tmp_path / "lin.png", log=False, units="eV/atom", quantity="E_f")
    )
    with pytest.raises(ValueError, match="non-positive"):
        parity_plot([1.0, -1.0], [1.0, 1.0], tmp_path / "bad.png")
    assert (tmp_path / "pdf.pdf") == parity_plot(y, y, tmp_path / "pdf.pdf")


def test_learning_curve_plot(tmp_path: Path) -> None:
    hist = {"train_loss": [1.0, 0.5, 0.3, 0.2], "val_loss": [1.1, 0.7, float("nan"), 0.5]}
    assert_png(learning_curve_plot(hist, tmp_path / "lc.png", logy=True))
    with pytest.raises(ValueError, match="non-empty"):
        learning_curve_plot({"train_loss": []}, tmp_path / "empty.png")


def test_strategy_comparison_plot(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "strategy": ["scratch", "scratch", "pretrain", "pretrain", "two-stage"],
            "dataset": ["D1", "D2", "D1", "D2", "D2"],
            "log10_mae_mean": [0.4, 0.3, 0.3, 0.2, 0.15],
            "log10_mae_std": [0.05, 0.04, 0.03, 0.02, 0.02],
        }
    )
    assert_png(strategy_comparison_plot(table, tmp_path / "cmp.png", title="κ"))
    assert_png(strategy_comparison_plot(table.drop(columns="log10_mae_std"), tmp_path / "n.png"))
    with pytest.raises(ValueError, match="lacks column"):
        strategy_comparison_plot(table, tmp_path / "x.png", metric="mape")
    with pytest.raises(ValueError, match="duplicated"):
        strategy_comparison_plot(pd.concat([table, table]), tmp_path / "x.png")


def test_size_study_plot(tmp_path: Path) -> None:
    fr = [0.1, 0.25, 0.5, 1.0]
    assert_png(
        size_study_plot(fr, [0.5, 0.4, 0.3, 0.25], [0.05, 0.04, 0.03, 0.02], tmp_path / "s.png")
    )
    multi = {"scratch": [0.6, 0.5, 0.4, 0.3], "pretrained": [0.4, 0.3, 0.25, 0.2]}
    stds = {"scratch": [0.1] * 4, "pretrained": [0.05] * 4}
    assert_png(size_study_plot(fr, multi, stds, tmp_path / "m.png", logx=True))
    assert_png(size_study_plot(fr, multi, None, tmp_path / "m2.png"))
    with pytest.raises(ValueError, match="lengths"):
        size_study_plot(fr, [0.5, 0.4], None, tmp_path / "bad.png")
