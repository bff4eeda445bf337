"""Registry/screening fixtures (defined in tests/registry/registry_testkit.py)."""

from __future__ import annotations

from registry_testkit import _one_thread, tiny_project  # noqa: F401
