"""Fixtures for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from model_testkit import sixteen_structures
from pymatgen.core import Structure


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny graphs train faster on one thread (and do not fight other jobs for cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def structures16() -> list[Structure]:
    return sixteen_structures()
