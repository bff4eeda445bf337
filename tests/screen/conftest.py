"""Registry/screening fixtures (defined in tests/registry/registry_testkit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))

from registry_testkit import _mlflow_template, _one_thread, tiny_project  # noqa: E402, F401
