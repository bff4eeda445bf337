"""Registry trust end to end: `kappaflow predict` / `screen` refuse a tampered model version and
never run code that came with a registered model (tests for kappaflow.registry.trust)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import registry_testkit as kit

pytestmark = pytest.mark.integration

NAME = "kappaflow-kappa"
DS = "paraisite_d1"
#: Bait: code that would leave a marker (and then fail) if anything imported it.
EVIL = (
    "from pathlib import Path\n"
    "Path({marker!r}).write_text('registry code ran')\n"
    "raise SystemExit('registry code ran')\n"
)


@pytest.fixture()
def registered(tiny_project):
    """A project with champion v1 registered by the register stage, its params.yaml and files."""
    from omegaconf import OmegaConf

    from kappaflow.stages.register import register_stage

    root, cfg = tiny_project
    if OmegaConf.select(cfg, "registry.gate") is not None:
        cfg.registry.gate.enforce = False  # no baseline results in this scratch project
    kit.write_candidate(root, "finetune", DS, 0.3, n_members=3)
    register_stage(cfg)
    OmegaConf.save(cfg, root / "params.yaml")  # the CLI reads the project's params.yaml
    (root / "NaCl.cif").write_text(kit.cif(kit.nacl()))
    return root, cfg


def _model_dir(version: int = 1) -> Path:
    """Local root of the logged model behind ``version`` (file store of the test)."""
    from mlflow import MlflowClient

    return Path(urlparse(MlflowClient().get_model_version_download_uri(NAME, version)).path)


def _predict(root: Path, *extra: str) -> int:
    from kappaflow.cli import main

    return main(["predict", "--json", *extra, str(root / "NaCl.cif")])


def _recorded_sha(root: Path) -> str:
    return json.loads((root / "models/champion.json").read_text())["ensemble_sha256"]


def test_verified_champion_predicts(registered, capsys):
    root, _ = registered
    assert _predict(root) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["formula"] == "NaCl"
    # the test kit registers with the gate off (as the smoke run does): one warning, no error
    assert err.startswith("WARNING: kappaflow-kappa v1 did not pass the baseline gate")
    assert len(err.splitlines()) == 1 and "mean nothing" in err


def test_modified_weights_are_refused(registered, capsys, tmp_path):
    root, _ = registered
    member = _model_dir() / "artifacts/ensemble/members/member-00.pt"
    other = kit.write_members(tmp_path, n=1, seed=7)[0]  # same architecture, other weights
    member.write_bytes(other.read_bytes())
    assert _predict(root) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ERROR: refusing kappaflow-kappa v1")
    assert f"!= {_recorded_sha(root)}" in err and "`dvc repro register`" in err


def test_extra_file_and_replaced_members_are_refused(registered, capsys, tmp_path):
    root, _ = registered
    ens = _model_dir() / "artifacts/ensemble"
    (ens / "members/sitecustomize.py").write_text("print('hi')\n")
    assert _predict(root) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: refusing kappaflow-kappa v1")
    assert "extra ['members/sitecustomize.py']" in err and "`dvc repro register`" in err
    (ens / "members/sitecustomize.py").unlink()
    spec = json.loads((ens / "ensemble.json").read_text())
    spec["members"] = spec["members"][:2]  # a member dropped (and its file removed)
    (ens / "ensemble.json").write_text(json.dumps(spec))
    (ens / "members/member-02.pt").unlink()
    assert _predict(root) == 2
    assert f"!= {_recorded_sha(root)}" in capsys.readouterr().err


def test_domain_files_are_covered(registered, capsys):
    root, _ = registered
    domain = _model_dir() / "artifacts/ensemble/domain.json"
    meta = json.loads(domain.read_text()) | {"threshold": 1e9}  # everything "in domain"
    domain.write_text(json.dumps(meta))
    assert _predict(root) == 2
    err = capsys.readouterr().err
    assert "ensemble directory sha256" in err and "`dvc repro register`" in err


def test_a_consistently_retagged_version_is_refused_by_champion_json(registered, capsys, tmp_path):
    """An EDIT user can rewrite artifacts AND tags; champion.json (DVC) still pins the digest."""
    from mlflow import MlflowClient

    from kappaflow.registry.trust import directory_digest, ensemble_dir_sha256

    root, _ = registered
    ens = _model_dir() / "artifacts/ensemble"
    other = kit.write_members(tmp_path, n=1, seed=7)[0]
    (ens / "members/member-00.pt").write_bytes(other.read_bytes())
    client = MlflowClient()
    client.set_model_version_tag(NAME, "1", "ensemble_sha256", directory_digest(ens))
    client.set_model_version_tag(NAME, "1", "ensemble_dir_sha256", ensemble_dir_sha256(ens))
    for uri in (None, f"models:/{NAME}/1", f"models:/{NAME}@champion"):
        assert _predict(root, *(["--model-uri", uri] if uri else [])) == 2
        err = capsys.readouterr().err
        assert "models/champion.json" in err and f"!= {_recorded_sha(root)}" in err


def test_a_tag_that_differs_from_champion_json_is_refused(registered, capsys):
    from mlflow import MlflowClient

    root, _ = registered
    MlflowClient().set_model_version_tag(NAME, "1", "ensemble_sha256", "0" * 64)
    assert _predict(root) == 2
    err = capsys.readouterr().err
    assert f"!= {'0' * 64} recorded in its ensemble_sha256 tag" in err


def test_missing_champion_json_is_refused(registered, capsys):
    root, _ = registered
    (root / "models/champion.json").unlink()
    assert _predict(root) == 2
    err = capsys.readouterr().err
    assert "cannot be verified" in err and "dvc repro register" in err


def test_non_registry_uri_is_refused(registered, capsys):
    root, _ = registered
    assert _predict(root, "--model-uri", str(_model_dir())) == 2
    assert "only registered versions" in capsys.readouterr().err


def test_registry_code_is_neither_run_nor_needed(registered, capsys, tmp_path):
    """Bait the logged model's code (model_code.py, code/kappaflow): predict never touches it."""
    root, _ = registered
    model = _model_dir()
    marker = tmp_path / "ran.txt"
    bait = EVIL.format(marker=str(marker))
    (model / "model_code.py").write_text(bait)
    for f in (model / "code/kappaflow").rglob("*.py"):
        f.write_text(bait)
    assert _predict(root) == 0
    assert json.loads(capsys.readouterr().out)[0]["formula"] == "NaCl"
    assert not marker.exists()
    assert all("code/kappaflow" not in str(getattr(m, "__file__", "") or "")
               for m in list(sys.modules.values()))  # fmt: skip
    # the bait is live: MLflow's own loader (the old load path) runs it
    env = dict(os.environ, MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"])
    subprocess.run(
        [sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model('models:/{NAME}/1')"],
        env=env, cwd=root, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert marker.read_text() == "registry code ran"


def test_screen_refuses_a_tampered_champion(registered):
    from kappaflow.registry.trust import UntrustedModelError
    from kappaflow.stages.screen import screen_stage

    root, cfg = registered
    member = _model_dir() / "artifacts/ensemble/members/member-01.pt"
    data = member.read_bytes()  # one flipped byte
    member.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(UntrustedModelError, match=r"refusing kappaflow-kappa v1 .*dvc repro"):
        screen_stage(cfg)
    assert not (root / "reports/screen/ranked.csv").exists()
