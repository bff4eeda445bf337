"""Small file helpers: every artifact is written atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import math
import os
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


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write strict JSON atomically; create parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(strict_json(obj), indent=indent) + "\n")
    os.replace(tmp, p)
    return p


def config_digest(obj: Any, length: int = 12) -> str:
    """Return a short sha256 of a JSON-able object (key order ignored): a cache key for a config."""
    text = json.dumps(strict_json(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
