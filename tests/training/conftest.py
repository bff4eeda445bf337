"""Training test fixtures: single-threaded torch (deterministic and fast on small CPUs)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
