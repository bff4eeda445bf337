"""Transfer-test fixtures: single-threaded torch; reuse the tiny crystals of the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: Crystals of the `graphs` fixture.
N_TINY = 24


@pytest.fixture(scope="module")
def graphs() -> list:
    """``N_TINY`` tiny in-code crystals with a synthetic κ (W/m/K)."""
    from kappa_testkit import tiny_graphs

    return tiny_graphs(N_TINY)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory, graphs: list):
    """A frozen 'pretrained' tiny CGCNN (moved weights and batch-norm stats), as `features` has it.

    Module-scoped: a test module may replace its head (each module gets its own copy).
    """
    from kappa_testkit import perturbed_export
    from registry_testkit import TINY_CGCNN

    from kappaflow.transfer import prepare_model

    path = tmp_path_factory.mktemp("pretrain") / "tiny.pt"
    path = perturbed_export(TINY_CGCNN, graphs, path, ["a", "b"])
    strategy = {"name": "features", "pretrained": "tiny", "model": "cgcnn", "regressor": "ridge"}
    model, _ = prepare_model(strategy, TINY_CGCNN, path, 1)
    return model
