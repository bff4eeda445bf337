from pathlib import Path

import pytest

from kappaflow.config import load_params, stage_main
from kappaflow.layout import dataset_spec, project_root, resolved_data_root


@pytest.fixture()
def cfg():
    return load_params(project_root() / "params.yaml")


def test_env_data_root_must_match_the_tracked_one(cfg, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("KAPPAFLOW_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="DVC tracks paths.data_root"):
        resolved_data_root(cfg)
    monkeypatch.setenv("KAPPAFLOW_DATA_DIR", str(project_root() / cfg.paths.data_root))
    assert resolved_data_root(cfg) == (project_root() / cfg.paths.data_root).resolve()


def test_unknown_dataset_is_named(cfg):
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        dataset_spec(cfg, "nope")
    assert dataset_spec(cfg, "paraisite_d1").target("kappa").transform == "log10"


def test_stage_main_splits_positionals_and_overrides(monkeypatch):
    seen = {}

    def fn(c, *args):
        seen["args"] = args
        seen["seed"] = c.seed

    stage_main(fn, ["paraisite_d1", "seed=7"])
    assert seen == {"args": ("paraisite_d1",), "seed": 7}
