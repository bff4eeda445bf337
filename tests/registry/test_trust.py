"""kappaflow.registry.trust + champion.load_champion: verified, code-free loading of a version."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import registry_testkit as kit

NAME = "toy-kappa"


@pytest.fixture()
def ensemble_dir(tmp_path):
    """An ensemble directory as the register stage writes it, and its register-side digest."""
    from kappaflow.registry.domain import fit_domain
    from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
    from kappaflow.registry.predictor import item_from_cif
    from kappaflow.registry.pyfunc import write_ensemble_dir
    from kappaflow.registry.trust import ensemble_sha256

    members = kit.write_members(tmp_path / "members", n=2)
    graph = GraphSettings(kit.CUTOFF, kit.MAX_NEIGHBORS)
    ens = KappaEnsemble.from_files(members, graph, device="cpu")
    items = [item_from_cif(kit.cif(s), i, kit.CUTOFF) for i, s, _ in kit.training_structures()]
    data = [ens.featurize(it.crystal, it.id) for it in items]
    quantile = 0.9
    domain = fit_domain(ens.predict(data).embedding, [it.crystal.numbers for it in items], quantile)
    out = write_ensemble_dir(tmp_path / "ensemble", members, graph, domain, {"dataset": "toy"})
    sha = ensemble_sha256(members, {"graph": graph.to_dict(), "quantile": quantile})
    return out, sha, members


def test_directory_digest_matches_the_register_stage_digest(ensemble_dir):
    from kappaflow.registry.trust import directory_digest, verify_ensemble_dir

    d, sha, _ = ensemble_dir
    assert directory_digest(d) == sha
    assert verify_ensemble_dir(d, "toy v1", {"ensemble_sha256": sha}) == sha


@pytest.mark.parametrize("damage", ["symlink", "traversal", "missing", "no_tag", "extra_dir"])
def test_layout_and_missing_digests_are_refused(ensemble_dir, damage, tmp_path):
    from kappaflow.registry.trust import UntrustedModelError, verify_ensemble_dir

    d, sha, _ = ensemble_dir
    tags: dict[str, str | None] = {"ensemble_sha256": sha}
    if damage == "symlink":
        (d / "domain.json").unlink()
        (d / "domain.json").symlink_to(tmp_path / "elsewhere.json")
        match = "not a regular file"
    elif damage == "traversal":
        spec = json.loads((d / "ensemble.json").read_text())
        spec["members"][0] = "../members/repeat0-fold0.pt"
        (d / "ensemble.json").write_text(json.dumps(spec))
        match = "unexpected member files"
    elif damage == "missing":
        (d / "train_embeddings.npy").unlink()
        match = r"missing \['train_embeddings.npy'\]"
    elif damage == "extra_dir":
        (d / "code" / "kappaflow").mkdir(parents=True)
        (d / "code" / "kappaflow" / "__init__.py").write_text("raise SystemExit\n")
        match = r"extra \['code/kappaflow/__init__.py'\]"
    else:
        tags = {"ensemble_sha256": None}
        match = "no ensemble_sha256 in its ensemble_sha256 tag"
    with pytest.raises(UntrustedModelError, match=match) as err:
        verify_ensemble_dir(d, "toy v1", tags)
    assert str(err.value).startswith("refusing toy v1") and "dvc repro register" in str(err.value)


def _register(d, tags):
    import mlflow

    from kappaflow.registry import promotion as P
    from kappaflow.registry.pyfunc import log_ensemble_model

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("trust-test")  # not an experiment id cached by an earlier test's store
    with mlflow.start_run():
        info = log_ensemble_model(d)
    return P.register_version(mlflow.MlflowClient(), NAME, info.model_uri, None, tags)


def test_load_champion_builds_the_ensemble_from_data_only(tiny_project, ensemble_dir):
    from kappaflow.registry.champion import load_champion, resolve_model
    from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
    from kappaflow.registry.predictor import predict_cifs
    from kappaflow.registry.trust import UntrustedModelError, ensemble_dir_sha256

    _, cfg = tiny_project
    d, sha, members = ensemble_dir
    v1 = _register(d, {"ensemble_sha256": sha, "ensemble_dir_sha256": ensemble_dir_sha256(d)})
    uri, info = resolve_model(cfg, f"models:/{NAME}/{v1.version}")
    assert info["pinned"] is None  # champion.json pins no version of this model
    model = load_champion(uri, "cpu", info)
    assert model.sha256 == sha and model.ensemble.n_members == 2 and model.domain.quantile == 0.9
    cifs = [kit.cif(kit.nacl()), kit.cif(kit.silicon())]
    direct = KappaEnsemble.from_files(members, GraphSettings(kit.CUTOFF, kit.MAX_NEIGHBORS), "cpu")
    got = predict_cifs(model.ensemble, model.domain, cifs)
    want = predict_cifs(direct, model.domain, cifs)
    assert np.allclose(got["log10_kappa"], want["log10_kappa"])
    assert np.allclose(got["sigma_log10"], want["sigma_log10"])
    # a version registered without digests (e.g. by hand) is refused, even with a config
    v2 = _register(d, {"dataset": "toy"})
    with pytest.raises(UntrustedModelError, match=f"refusing {NAME} v{v2.version} .*no ensemble"):
        load_champion(f"models:/{NAME}/{v2.version}", "cpu")
