"""``mirror`` source: copy a curated table from the data root, byte for byte, with sha256 checks."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kappaflow.data.sources.base import (
    FetchResult,
    Source,
    check_sha256,
    output_columns,
    register_source,
    tqdm_disable,
)
from kappaflow.io_utils import atomic_write
from kappaflow.layout import DATA_ENV_VAR

if TYPE_CHECKING:
    from kappaflow.cards import DatasetSpec

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"


def manifest_entry(data_root: Path, rel_path: str) -> dict[str, Any] | None:
    """Return ``data_root/MANIFEST.json[rel_path]`` (keys: paths relative to the root) or None."""
    manifest = data_root / MANIFEST_NAME
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    entry = entries.get(Path(rel_path).as_posix())
    return entry if isinstance(entry, dict) else None


def _compression(path: Path) -> str | None:
    """Return ``"gzip"`` if the file starts with the gzip magic bytes, else None (plain CSV)."""
    with open(path, "rb") as f:
        return "gzip" if f.read(2) == b"\x1f\x8b" else None


def read_header(path: Path) -> list[str]:
    """Return the column names of a (gzip) CSV file."""
    import pandas as pd

    return list(pd.read_csv(path, nrows=0, compression=_compression(path)).columns)


def count_rows(path: Path, column: str) -> int:
    """Count the data rows of a (gzip) CSV, parsing only ``column`` (CIF cells span lines)."""
    import pandas as pd

    chunks = pd.read_csv(path, usecols=[column], chunksize=200_000, compression=_compression(path))
    return sum(len(chunk) for chunk in chunks)


@register_source
class MirrorSource(Source):
    """Copy ``data_root / spec.path`` to ``dest`` without re-encoding.

    The copy is checked against ``spec.sha256`` (when the card sets it) and against the entry of
    ``data_root/MANIFEST.json`` (when present); the card's columns must be in the header.
    No options.
    """

    kind = "mirror"
    option_names = frozenset({"progress"})

    def fetch(self, spec: DatasetSpec, dest: Path, data_root: Path, **kw: Any) -> FetchResult:
        """Copy the mirror file to ``dest`` atomically and verify it.

        Raises:
            FileNotFoundError: the file is not under ``data_root`` (message says how to point
                ``KAPPAFLOW_DATA_DIR`` / ``paths.data_root`` at the data).
            ChecksumMismatchError: sha256 differs from the card or the manifest (names both).
            ValueError: a column the card expects is missing from the file.
        """
        opts = self.options(spec, kw) if spec.source.kind == "mirror" else dict(kw)
        src = Path(data_root) / spec.path
        if not src.is_file():
            raise FileNotFoundError(
                f"dataset {spec.name!r}: raw file {spec.path!r} not found under data root "
                f"{data_root} (looked for {src}). Set the {DATA_ENV_VAR} environment variable or "
                f"the paths.data_root config key to the folder holding the curated data."
            )
        entry = manifest_entry(Path(data_root), spec.path)
        from tqdm.auto import tqdm

        h = hashlib.sha256()

        def copy(tmp: Path) -> None:
            with (
                open(src, "rb") as fin,
                open(tmp, "wb") as fout,
                tqdm(
                    total=src.stat().st_size,
                    unit="B",
                    unit_scale=True,
                    desc=f"copy {spec.name}",
                    disable=tqdm_disable(opts.get("progress")),
                ) as bar,
            ):
                for chunk in iter(lambda: fin.read(1 << 20), b""):
                    fout.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            digest = h.hexdigest()
            check_sha256(digest, spec.sha256, str(src), f"dataset card {spec.name!r}")
            if entry is not None:
                check_sha256(digest, entry.get("sha256"), str(src), f"{data_root}/{MANIFEST_NAME}")
            header = read_header(tmp)
            missing = [c for c in output_columns(spec) if c not in header]
            if missing:
                raise ValueError(
                    f"dataset {spec.name!r}: {src} lacks column(s) {missing} named by the card; "
                    f"it has {header}"
                )

        atomic_write(dest, copy)
        digest = h.hexdigest()
        if entry is not None and isinstance(entry.get("rows"), int) and entry.get("sha256"):
            n_rows = int(entry["rows"])  # content verified by hash above
        else:
            n_rows = count_rows(dest, spec.id_col)
        log.info("%s: copied %s (%d rows, sha256 %s)", spec.name, src, n_rows, digest)
        return FetchResult(path=dest, sha256=digest, n_rows=n_rows, source=f"mirror:{src}")


__all__ = ["MANIFEST_NAME", "MirrorSource", "count_rows", "manifest_entry", "read_header"]
