"""Out-of-domain flags: unseen elements and embedding distance beyond the training quantile."""

from __future__ import annotations

import numpy as np
import pytest

from kappaflow.registry.domain import DomainInfo, fit_domain, ood_flags


@pytest.fixture()
def domain():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4))
    numbers = [[11, 17], [12, 8], [31, 33]] * 16 + [[11, 17], [12, 8]]
    return fit_domain(emb, numbers, quantile=0.95), emb


def test_training_materials_are_in_domain(domain):
    dom, emb = domain
    in_dom, reasons, dist = ood_flags(dom, [[11, 17]] * 3, emb[:3])
    assert in_dom.all() and reasons == ["", "", ""]
    assert np.allclose(dist, 0.0, atol=1e-6)
    assert dom.elements == frozenset({8, 11, 12, 17, 31, 33}) and dom.threshold > 0


def test_unseen_element_is_flagged_by_name(domain):
    dom, emb = domain
    in_dom, reasons, _ = ood_flags(dom, [[14, 14], [54, 11]], emb[:2])
    assert not in_dom.any()
    assert reasons == ["unseen elements: Si", "unseen elements: Xe"]


def test_far_embedding_is_flagged_with_its_distance(domain):
    dom, emb = domain
    far = emb[:1] + 100.0 * emb.std(axis=0)
    in_dom, reasons, dist = ood_flags(dom, [[11, 17]], far)
    assert not in_dom[0] and dist[0] > dom.threshold
    assert reasons[0].startswith("embedding distance") and "q0.95" in reasons[0]


def test_save_load_round_trip(tmp_path, domain):
    dom, emb = domain
    dom.save(tmp_path)
    back = DomainInfo.load(tmp_path)
    assert back.elements == dom.elements and back.threshold == pytest.approx(dom.threshold)
    a = ood_flags(dom, [[11, 17], [14]], emb[:2])
    b = ood_flags(back, [[11, 17], [14]], emb[:2])
    assert (a[0] == b[0]).all() and a[1] == b[1] and np.allclose(a[2], b[2], atol=1e-4)


def test_needs_two_training_points():
    with pytest.raises(ValueError, match="N >= 2"):
        fit_domain(np.zeros((1, 3)), [[1]])
