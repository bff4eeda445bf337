"""Project and data locations.

The raw datasets live outside the repository (never in git). Their root is, in order of precedence:
the ``KAPPAFLOW_DATA_DIR`` environment variable, the ``paths.data_root`` config key, or
``../shared/data`` relative to the project root.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "KAPPAFLOW_DATA_DIR"
DEFAULT_DATA_ROOT = "../shared/data"


def project_root() -> Path:
    """Return the project root: nearest ancestor of the cwd with ``dvc.yaml``/``pyproject.toml``.

    Falls back to the repository that contains this package (editable installs), then to the cwd.
    """
    for base in (Path.cwd(), Path(__file__).resolve().parent):
        for candidate in (base, *base.parents):
            if (candidate / "dvc.yaml").is_file() or (candidate / "pyproject.toml").is_file():
                return candidate
    return Path.cwd()


def data_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute directory that holds the raw datasets.

    Args:
        configured: value of ``paths.data_root`` from the config, if any. A relative path is taken
            relative to :func:`project_root`.

    Returns:
        Absolute path. ``KAPPAFLOW_DATA_DIR`` wins over ``configured`` when set.
    """
    raw = os.environ.get(DATA_ENV_VAR) or configured or DEFAULT_DATA_ROOT
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return path.resolve()
