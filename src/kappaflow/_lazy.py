"""Lazy package exports, so that importing a light submodule does not pull in heavy libraries."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """Build ``__all__``, ``__getattr__`` and ``__dir__`` for a package with lazy exports.

    Args:
        package: the package's ``__name__`` (for error messages).
        exports: public name -> module that defines it.

    Returns:
        ``(__all__, __getattr__, __dir__)`` to assign at package level.
    """
    names = sorted(exports)

    def getattr_(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
