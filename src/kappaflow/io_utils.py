"""Small file helpers: every artifact is written atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def strict_json(obj: Any) -> Any:
    """Return ``obj`` with NaN/inf → None and numpy scalars → Python (strict JSON for DVC)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file that then replaces it.

    The temporary file is ``<name>.tmp`` in a fresh hidden folder next to ``path``: the same
    filesystem (``os.replace`` is atomic), one folder per call (concurrent writers never collide)
    and a fixed file name, so formats that record the name they were written under (torch's zip
    archive, a gzip header) give the same bytes on every run. The file is fsynced before the
    rename. Parent folders are created.

    Args:
        path: the file to write.
        write: called once with the temporary path; writes the whole file there.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` raises; the temporary folder is removed and ``path`` left untouched.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp = tmp_dir / f"{out.name}.tmp"
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically (:func:`atomic_write`); create parent folders."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write strict JSON atomically (:func:`atomic_write`); create parent folders."""
    return write_text(path, json.dumps(strict_json(obj), indent=indent) + "\n")


def config_digest(obj: Any, length: int = 12) -> str:
    """Return a short sha256 of a JSON-able object (key order ignored): a cache key for a config."""
    text = json.dumps(strict_json(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
