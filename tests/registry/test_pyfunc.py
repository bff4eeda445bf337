"""The pyfunc: log -> load (models from code, weights_only members) -> predict CIFs.

This is the MLflow UI / serving path; ``kappaflow predict``/``screen`` load the ensemble
artifact without it (tests/registry/test_trust.py, tests/screen/test_predict_trust.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import registry_testkit as kit


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """One tiny 3-member ensemble logged once for the module (own store, cwd and artifacts)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        tmp_path = tmp_path_factory.mktemp("pyfunc")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield _log_tiny_model(tmp_path, monkeypatch)


@pytest.fixture()
def model_uri(logged_model, monkeypatch):
    """The logged model's URI, with MLflow pointed at its store (other tests move the global)."""
    import mlflow

    uri = logged_model.store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return logged_model.model_uri


def _log_tiny_model(tmp_path, monkeypatch):
    import mlflow

    from kappaflow.registry.domain import fit_domain
    from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
    from kappaflow.registry.predictor import item_from_cif, predict_items
    from kappaflow.registry.pyfunc import log_ensemble_model, write_ensemble_dir

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    members = kit.write_members(tmp_path / "members", n=3)
    graph = GraphSettings(kit.CUTOFF, kit.MAX_NEIGHBORS)
    ens = KappaEnsemble.from_files(members, graph, device="cpu")
    train = [kit.cif(s) for _, s, _ in kit.training_structures()]
    items = [item_from_cif(c, str(i), kit.CUTOFF) for i, c in enumerate(train)]
    data = [ens.featurize(it.crystal, it.id) for it in items]
    domain = fit_domain(ens.predict(data).embedding, [it.crystal.numbers for it in items])
    assert len(predict_items(ens, domain, items)) == len(items)
    ens_dir = write_ensemble_dir(tmp_path / "ensemble", members, graph, domain, {"dataset": "toy"})
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow.create_experiment("pyfunc", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_ensemble_model(ens_dir, metadata={"kappaflow": {"dataset": "toy"}})
    return SimpleNamespace(model_uri=info.model_uri, store=os.environ["MLFLOW_TRACKING_URI"])


def test_round_trip_predicts_nacl_and_si_and_isolates_a_bad_cif(model_uri):
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame(
        {
            "id": ["NaCl", "Si", "bad"],
            "cif": [kit.cif(kit.nacl()), kit.cif(kit.silicon()), "data_x\n_cell_length_a 3\n"],
        }
    )
    out = model.predict(frame)
    assert list(out["id"]) == ["NaCl", "Si", "bad"]
    ok = out.iloc[:2]
    assert list(ok["formula"]) == ["NaCl", "Si"]
    assert (ok["error"] == "").all()
    assert np.isfinite(ok["kappa"]).all() and (ok["kappa"] > 0).all()
    assert np.allclose(ok["kappa"], 10 ** ok["log10_kappa"])
    assert (ok["sigma_log10"] >= 0).all()
    assert ok["kappa_lo68"].isna().all()  # the pyfunc path sets no calibration
    # NaCl is a training material; Si has an element the training set lacks
    assert bool(ok["in_domain"].iloc[0]) and not bool(ok["in_domain"].iloc[1])
    assert "unseen elements: Si" in ok["ood_reason"].iloc[1]
    bad = out.iloc[2]
    assert np.isnan(bad["kappa"]) and bad["error"].startswith("malformed_cif")


def test_list_input_and_clear_errors(model_uri):
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict([kit.cif(kit.nacl())])
    assert list(out["id"]) == ["0"] and out["error"].iloc[0] == ""
    with pytest.raises(ValueError, match="'cif' column"):
        model.predict(pd.DataFrame({"structure": ["x"]}))


def test_artifacts_are_weights_only_files_and_requirements_are_explicit(model_uri):
    import mlflow
    import torch

    from kappaflow.registry.trust import ENSEMBLE_SUBPATH

    root = Path(mlflow.artifacts.download_artifacts(model_uri))
    # where kappaflow's own (code-free) load path looks for the ensemble in a logged model
    spec = json.loads((root / ENSEMBLE_SUBPATH / "ensemble.json").read_text())
    assert len(spec["members"]) == 3 and spec["graph"]["cutoff"] == kit.CUTOFF
    for member in spec["members"]:
        payload = torch.load(root / "artifacts/ensemble" / member, weights_only=True)
        assert payload["format"] == "kappaflow-model/1"
    reqs = (root / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") and "+" not in r for r in reqs)
    assert any(r.startswith("torch-geometric==") for r in reqs)
    assert not list(root.rglob("python_model.pkl"))  # models from code: nothing pickled
    assert (root / "code" / "kappaflow" / "registry" / "pyfunc.py").is_file()
