from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from kappaflow.evaluation.report import (
    NOT_COMPARABLE,
    published_table,
    transfer_table,
    write_report,
)
from kappaflow.layout import project_root


def _results() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy": ["scratch", "scratch", "two_stage"],
            "train_set": ["paraisite_d1", "paraisite_d1", "paraisite_d1"],
            "test_set": ["paraisite_d1", "paraisite_d2", "paraisite_d1"],
            "mape_mean": [54.31, 120.0, 40.0],
            "mape_std": [3.2, 10.04, 2.0],
            "log10_mae_mean": [0.2814, 0.5, 0.2],
            "log10_mae_std": [0.0201, 0.05, 0.01],
        }
    )


def test_transfer_table_cells() -> None:
    md = transfer_table(_results())
    lines = md.splitlines()
    assert "| strategy | train set | paraisite_d1 | paraisite_d2 |" in lines
    assert (
        "| scratch | paraisite_d1 | 54.3 ± 3.2 % / 0.281 ± 0.020 | 120.0 ± 10.0 % / 0.500 ± 0.050 |"
        in lines
    )
    assert "| two_stage | paraisite_d1 | 40.0 ± 2.0 % / 0.200 ± 0.010 | — |" in lines
    assert "grouped" in lines[0]


def test_transfer_table_errors() -> None:
    with pytest.raises(ValueError, match="lack"):
        transfer_table(_results().drop(columns="mape_std"))
    with pytest.raises(ValueError, match="duplicated"):
        transfer_table(pd.concat([_results(), _results()]))


def test_published_table_flagged() -> None:
    cfg = OmegaConf.load(project_root() / "conf" / "evaluation" / "default.yaml")
    published = OmegaConf.to_container(cfg.published.paraisite, resolve=False)
    md = published_table(published)
    assert NOT_COMPARABLE in md and "in-sample / not comparable" in md
    assert "| step_I_megnet_no_weights | paraisite_d1 | 82 ± 21 % | 253 ± 217 % |" in md
    assert "| step_III_retrained_on_aflow | paraisite_mix | 37 ± 14 % |" in md
    assert "liudakl/ParAIsite" in md
    assert "not found" in published_table(None)


def test_write_report_atomic(tmp_path: Path) -> None:
    out = write_report(tmp_path / "reports" / "transfer.md", "a", "b\n", title="Transfer")
    assert out.read_text() == "# Transfer\n\na\n\nb\n"
    assert [p.name for p in out.parent.iterdir()] == ["transfer.md"]
