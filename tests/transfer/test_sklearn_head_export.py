"""features strategy fold export: frozen encoder + scikit-learn head as arrays, no unpickling.

In-code crystals and a tiny CGCNN "pretrained" encoder (CPU, a few seconds): the exported
member must predict what the in-fold regressor predicted, through ``load_model`` and through
the registry's ensemble; files with pickled objects or unsupported / tampered heads are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kappa_testkit import CUTOFF, MAX_NEIGHBORS, split
from registry_testkit import TINY_CGCNN as CARD  # the one tiny CGCNN card of the tests

from kappaflow.models import build_model
from kappaflow.models.sklearn_head import ForestHead, RidgeHead, UnsupportedHeadError
from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
from kappaflow.training.export import SKLEARN_HEAD_FORMAT, load_model, predict, save_model
from kappaflow.training.target_transform import TargetTransform
from kappaflow.transfer import EmbeddingRegressor, extract_embeddings

N = 24  # = conftest.N_TINY, the crystals of the `graphs` fixture
PARAMS = {
    "ridge": {"alphas": [0.01, 1.0, 100.0]},
    "random_forest": {"n_estimators": 40, "min_samples_leaf": 2, "max_features": 0.33},
}
STRATEGY = {"name": "features", "pretrained": "tiny", "model": "cgcnn", "regressor_params": PARAMS}
# fixtures `graphs` (N tiny crystals) and `encoder` (a frozen "pretrained" CGCNN): conftest.py


def fold_member(
    encoder: torch.nn.Module,
    graphs: list[Any],
    regressor: str,
    train: np.ndarray,
    path: Path,
    clip_margin: float | None = 1.0,
) -> EmbeddingRegressor:
    """What build_fit_predict does for one fold of `features`: fit, then export the member."""
    X = extract_embeddings(encoder, graphs, batch_size=7)
    kappa = np.array([float(g.y[0, 0]) for g in graphs])  # W/m/K
    cfg = {**STRATEGY, "regressor": regressor, "clip_margin": clip_margin}
    reg = EmbeddingRegressor.from_cfg(cfg, seed=0).fit(X[train], kappa[train])
    encoder.head = reg.to_head()
    save_model(path, encoder, TargetTransform([reg.transform], ["kappa"]), CARD, {"fold": 0})
    return reg


def _plain(obj: Any) -> bool:
    """Whether a torch.load result holds only tensors and plain data (no other objects)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, str | int | float | bool | torch.Tensor)


# ---------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("regressor", ["ridge", "random_forest"])
@pytest.mark.parametrize("clip_margin", [1.0, None])
def test_exported_member_predicts_what_the_fold_regressor_predicted(
    encoder: torch.nn.Module,
    graphs: list[Any],
    tmp_path: Path,
    regressor: str,
    clip_margin: float | None,
) -> None:
    tr, _, te = split(N)
    path = tmp_path / "repeat0-fold0.pt"
    reg = fold_member(encoder, graphs, regressor, tr, path, clip_margin)
    X = extract_embeddings(encoder, graphs, batch_size=7)
    expected = reg.predict(X[te])  # κ, W/m/K: what the finetune stage wrote for the fold

    payload = torch.load(path, weights_only=True)
    assert payload["format"] == SKLEARN_HEAD_FORMAT and _plain(payload)
    assert payload["head"]["kind"] == regressor
    assert not any(k.startswith("head.") for k in payload["state_dict"])

    model, transform, info = load_model(path)
    head_type = RidgeHead if regressor == "ridge" else ForestHead
    assert isinstance(model.head, head_type) and info["n_targets"] == 1
    # the head alone, on the fold's own embeddings and on far-away ones (clipping)
    bounds = (model.head.clip_lo.item(), model.head.clip_hi.item())
    clipped = 0
    for emb in (X[te], 5.0 * X[te], -5.0 * X[te]):
        with torch.no_grad():
            z = model.head(torch.as_tensor(emb)).numpy()[:, 0]
        np.testing.assert_allclose(10.0**z, reg.predict(emb), rtol=1e-9)
        clipped += int(np.isin(z, bounds).sum())
    assert (clipped > 0) == (regressor == "ridge" and clip_margin is not None)
    # the whole member, crystals in, κ out (export.predict: float32 model output)
    ids, kappa = predict(model, transform, [graphs[i] for i in te], batch_size=5)
    assert ids == [f"m-{i}" for i in te]
    np.testing.assert_allclose(kappa[:, 0], expected, rtol=1e-6)

    # the registry's ensemble: log10 κ of every member, σ over members, member-0 embedding
    other = tmp_path / "repeat0-fold1.pt"
    reg1 = fold_member(encoder, graphs, regressor, np.setdiff1d(np.arange(N), te[:2]), other)
    ens = KappaEnsemble.from_files([path, other], GraphSettings(CUTOFF, MAX_NEIGHBORS), "cpu")
    out = ens.predict([graphs[i] for i in te])
    want = np.log10(np.stack([expected, reg1.predict(X[te])], axis=1))
    np.testing.assert_allclose(out.members_log10, want, atol=1e-6)
    np.testing.assert_allclose(out.log10_kappa, want.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out.sigma_log10, want.std(axis=1, ddof=1), atol=1e-6)
    np.testing.assert_allclose(out.embedding, X[te], rtol=1e-5, atol=1e-6)


def test_multi_target_ridge_and_forest_heads() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4))
    Y = np.stack([10 ** (1 + 0.3 * X[:, 0]), 10 ** (0.5 - 0.2 * X[:, 1])], axis=1)
    for name in ("ridge", "random_forest"):
        reg = EmbeddingRegressor(name, {"n_estimators": 10} if name != "ridge" else {}).fit(X, Y)
        head = reg.to_head()
        with torch.no_grad():
            z = head(torch.as_tensor(X * 2.0)).numpy()
        assert z.shape == (50, 2)
        np.testing.assert_allclose(10.0**z, reg.predict(X * 2.0), rtol=1e-9)


# ---------------------------------------------------------------------------------- refusals
CALLED: list[str] = []


def _side_effect() -> None:  # what a malicious pickle would run
    CALLED.append("ran")


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_side_effect, ())


def _tampered(path: Path, out: Path, edit: Any) -> Path:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, out)
    return out


def test_pickled_or_tampered_members_are_refused(
    encoder: torch.nn.Module, graphs: list[Any], tmp_path: Path
) -> None:
    tr, _, _ = split(N)
    ridge = tmp_path / "ridge.pt"
    reg = fold_member(encoder, graphs, "ridge", tr, ridge)
    forest = tmp_path / "forest.pt"
    fold_member(encoder, graphs, "random_forest", tr, forest)

    # a scikit-learn estimator pickled into the file (what a naive export would do), or any
    # object with a reduce hook: the weights-only load refuses it before running anything
    for name, obj in (("estimator", reg.estimator), ("hook", _Payload())):
        bad = _tampered(ridge, tmp_path / f"{name}.pt", lambda p, o=obj: p.update(head=o))
        with pytest.raises(ValueError, match="refused: it holds Python objects"):
            load_model(bad)
    assert CALLED == []

    def arrays(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
        return payload["head"]["tensors"]

    f64 = torch.float64
    cases = {
        "kind": (ridge, lambda p: p["head"].update(kind="gradient_boosting"),
                 "unsupported scikit-learn head kind 'gradient_boosting'"),
        "cycle": (forest, lambda p: arrays(p)["children_left"].__setitem__(0, 0),
                  "children_left must point after its node"),
        "feature": (forest, lambda p: arrays(p)["feature"].__setitem__(0, 10**6),
                    r"split feature outside \[0, 8\)"),
        "dtype": (ridge, lambda p: arrays(p).update(coef=arrays(p)["coef"].float()),
                  r"arrays \['coef'\] are not tensors of dtype"),
        "extra": (ridge, lambda p: arrays(p).update(code=torch.zeros(1)), r"extra \['code'\]"),
        "shape": (ridge, lambda p: arrays(p).update(mean=torch.zeros(3, dtype=f64)),
                  "do not fit together"),
        "nan": (ridge, lambda p: arrays(p)["intercept"].fill_(float("nan")), "non-finite"),
        "transform": (ridge, lambda p: p["transform"].update(mean=[0.5]), "mean 0 and std 1"),
        "weights": (ridge, lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))),
                    "weights do not fit the model card"),
        "format": (ridge, lambda p: p.update(format="kappaflow-model/9"),
                   "not a kappaflow-model/1 file"),
    }  # fmt: skip
    for name, (src, edit, message) in cases.items():
        bad = _tampered(src, tmp_path / f"{name}.pt", edit)
        with pytest.raises(ValueError, match=message):
            load_model(bad)
    # the registry's loader names the file it refuses
    bad = tmp_path / "kind.pt"
    with pytest.raises(UnsupportedHeadError, match=f"{bad}: refused: unsupported"):
        KappaEnsemble.from_files([ridge, bad], GraphSettings(CUTOFF, MAX_NEIGHBORS), "cpu")
    # one strategy per ensemble: a features member never joins MLP-head members
    mlp = save_model(tmp_path / "mlp.pt", build_model(CARD, 1), TargetTransform(["log10"]), CARD)
    with pytest.raises(ValueError, match="mix heads"):
        KappaEnsemble.from_files([ridge, mlp], GraphSettings(CUTOFF, MAX_NEIGHBORS), "cpu")
