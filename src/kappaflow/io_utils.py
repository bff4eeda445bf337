"""Small file helpers: atomic writes, strict JSON, config digests, content keys of caches.

Every artifact is written atomically (temp file + rename). Caches (fold predictions, pretraining
checkpoints) are keyed by :func:`content_key`: the sha256 of every file they read, their config,
the package version and a digest of the source code that computes them, so a cache is never
reused after one of its inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
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


def headline_metrics(obj: Any, prefix: str = "") -> dict[str, float | int]:
    """Flatten a nested mapping of numbers into ``{"a.b.c": number}`` for a DVC ``metrics:`` file.

    DVC shows every leaf of a metrics file as a column of ``dvc exp show`` and a row of
    ``dvc metrics show``: a headline file holds numbers only. Booleans become 0/1; NaN/inf, None
    and empty mappings are left out (DVC would print ``-``); anything else (a string, a list)
    raises, so that text never reaches the metrics surface (it belongs in a plain ``outs:`` file).

    Args:
        obj: a number or a (nested) mapping of numbers.
        prefix: key path of ``obj`` itself (``""`` at the top).

    Returns:
        Flat ``{dotted key: int | float}``, keys in input order.

    Raises:
        TypeError: a leaf that is not a number.
    """
    out: dict[str, float | int] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(headline_metrics(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None:
        return out
    if isinstance(obj, bool):
        return {prefix: int(obj)}
    if isinstance(obj, int):
        return {prefix: obj}
    if isinstance(obj, float):
        return {prefix: obj} if math.isfinite(obj) else out
    raise TypeError(f"metric {prefix or '<top>'!r} is {type(obj).__name__}, not a number")


def write_metrics(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write a headline DVC metrics file: flat numbers only (:func:`headline_metrics`).

    Args:
        path: the file (a ``metrics:`` entry of dvc.yaml).
        obj: a (nested) mapping of numbers.

    Returns:
        The written path.
    """
    return write_json(path, headline_metrics(obj))


def config_digest(obj: Any, length: int = 12) -> str:
    """Return a short sha256 of a JSON-able object (key order ignored): a cache key for a config."""
    text = json.dumps(strict_json(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class CorruptFileError(ValueError):
    """A file that cannot be what it claims to be (truncated, bad checksum, unreadable)."""


#: Read size of :func:`file_sha256` and :func:`verify_zip`, bytes.
CHUNK = 1 << 20

_SHA_MEMO: dict[tuple[str, int, int, int, int], str] = {}
_ZIP_MEMO: set[tuple[str, int, int, int, int]] = set()
_MEMO_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    """Return (resolved path, device, inode, size B, mtime ns): a file version's identity."""
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_sha256(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks (bounded memory).

    Memoised within the process by (path, device, inode, size, mtime ns): hashing the same
    300 MB graph cache again (once per fold, per study) costs one ``stat``. A file rewritten in
    place (new mtime) or replaced (``os.replace``: new inode) is hashed again.

    Args:
        path: the file.
        chunk: read size, bytes.

    Raises:
        FileNotFoundError: no such file.
    """
    p = Path(path)
    key = _stat_key(p)
    with _MEMO_LOCK:
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    with _MEMO_LOCK:
        _SHA_MEMO[key] = digest
    return digest


def verify_zip(path: str | os.PathLike[str]) -> None:
    """Check a zip archive end to end: central directory, then the CRC-32 of every member.

    ``torch.save`` files are zip archives whose members carry a CRC-32, but ``torch.load`` does
    not check it (a flipped byte loads silently; a truncated file fails with an unclear
    ``OSError``). This reads the whole file once (~0.1 s for 300 MB from the page cache);
    a file version that passed is memoised like :func:`file_sha256`.

    Args:
        path: the archive (e.g. a ``.pt`` file).

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: not a zip archive (e.g. truncated: no central directory), or a member
            whose bytes do not match its CRC-32; the message names the file and the reason.
    """
    p = Path(path)
    key = _stat_key(p)
    with _MEMO_LOCK:
        if key in _ZIP_MEMO:
            return
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise CorruptFileError(f"{p}: not a complete zip archive ({err})") from err
    if bad is not None:
        raise CorruptFileError(f"{p}: member {bad!r} does not match its CRC-32 (corrupt bytes)")
    with _MEMO_LOCK:
        _ZIP_MEMO.add(key)


#: Source trees (relative to the ``kappaflow`` package folder) whose code decides a trained
#: model's predictions: the default of :func:`code_digest`.
RESULT_CODE = (
    "cards.py",
    "layout.py",
    "structure",
    "data",
    "features",
    "graphs",
    "models",
    "training",
    "evaluation",
    "transfer",
)


@cache
def code_digest(parts: Sequence[str] = RESULT_CODE) -> str:
    """Hex sha256 of the installed ``kappaflow`` version and the source of ``parts``.

    Covers every ``*.py`` file under each part (a folder or a file relative to the
    ``kappaflow`` package folder), in sorted order, by relative path and bytes. Any edit there,
    a docstring included, changes the digest: caches keyed by it (:func:`content_key`) are then
    recomputed rather than reused with results of older code. Computed once per process and
    ``parts`` (a tuple; the source is not expected to change while a process runs).

    Args:
        parts: folders / files relative to ``src/kappaflow``; missing ones count as absent.
    """
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(f"kappaflow {package_version()}\n".encode())
    for part in sorted(parts):
        base = pkg / part
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for f in files:
            rel = f.relative_to(pkg).as_posix()
            h.update(f"{rel}\n".encode())
            h.update(f.read_bytes() if f.is_file() else b"<missing>")
            h.update(b"\0")
    return h.hexdigest()


def package_version() -> str:
    """Return the installed ``kappaflow`` version (``0+unknown`` when run from a source copy)."""
    try:
        return _dist_version("kappaflow")
    except PackageNotFoundError:
        return "0+unknown"


def content_key(
    files: Iterable[str | os.PathLike[str] | None],
    config: Any,
    code: Sequence[str] = RESULT_CODE,
    length: int = 12,
) -> str:
    """Short cache key over everything a cached result depends on.

    sha256 of: the sha256 of each input file's bytes (:func:`file_sha256`, memoised), in the
    order given; ``config`` (a JSON-able object, key order ignored, as :func:`config_digest`);
    and :func:`code_digest` of ``code`` (package version + source). Files count by content, not
    by path, so a project moved elsewhere keeps its caches; a missing file (or None) counts as
    absent (the code that reads it raises its own error).

    Args:
        files: every file the cached computation reads (weights, prepared datasets, graph
            caches, split files).
        config: the settings of the computation.
        code: source trees of :func:`code_digest` (relative to ``src/kappaflow``).
        length: hex characters kept.
    """
    digests = []
    for f in files:
        p = None if f is None else Path(f)
        digests.append(file_sha256(p) if p is not None and p.is_file() else None)
    sig = {"files": digests, "config": config, "code": code_digest(tuple(code))}
    return config_digest(sig, length=length)
