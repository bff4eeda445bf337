"""``matbench`` source: a matminer/matbench dataset (``.json.gz`` of pymatgen objects) as a table.

The dataset's URL and sha256 come from matminer's own dataset metadata
(``matminer.datasets.get_dataset_attribute``), so the file is the one ``load_dataset`` would use.
It is downloaded here rather than by ``matminer.datasets.load_dataset`` because matminer's
downloader does not check the HTTP status and sleeps 60 s per retry on a hash mismatch; the file
is then read with matminer's ``load_dataframe_from_json(decode=False)``, and each row's structure
is rebuilt with ``Structure.from_dict`` on its own. That keeps monty from importing whatever
classes the JSON names, and a malformed row becomes an empty-CIF row (reason in
``fetch_error``) instead of failing the whole load. Rows are never dropped.

Output: ``id = f"{dataset}-{i:0Nd}"`` (``i`` = row position in the matbench file, zero-padded to
the width of the largest index and at least 4 digits, like the curated mirror ids
``matbench_dielectric-0000`` / ``matbench_mp_e_form-000000``), ``formula`` = pymatgen reduced
formula, ``cif`` = ``CifWriter`` P1 text (structure cards only), target columns as mapped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kappaflow.data.sources.base import (
    FETCH_ERROR_COL,
    Converted,
    FetchResult,
    Source,
    SourceError,
    convert_structure,
    download,
    make_session,
    register_source,
    resolve_targets,
    sha256_file,
    tqdm_disable,
    write_table,
)
from kappaflow.data.validation import reduced_formula

if TYPE_CHECKING:
    import pandas as pd

    from kappaflow.cards import DatasetSpec

log = logging.getLogger(__name__)

#: Default download cache when neither ``cache_dir`` nor ``MATMINER_DATA`` is set.
DEFAULT_CACHE = "~/.cache/kappaflow/matbench"
STRUCTURE_COL = "structure"
COMPOSITION_COL = "composition"


def matbench_metadata(name: str) -> dict[str, Any] | None:
    """Return matminer's ``{"url", "hash", "file_type"}`` for ``name`` (None if unknown)."""
    from matminer.datasets.dataset_retrieval import get_dataset_attribute

    try:
        return {k: get_dataset_attribute(name, k) for k in ("url", "hash", "file_type")}
    except KeyError:
        return None


def default_cache_dir() -> Path:
    """Return ``$MATMINER_DATA`` if set, else ``~/.cache/kappaflow/matbench``."""
    return Path(os.environ.get("MATMINER_DATA") or DEFAULT_CACHE).expanduser()


def ids_for(name: str, n: int) -> list[str]:
    """Return row ids ``<name>-<i>`` zero-padded to the width of ``n - 1`` (at least 4 digits)."""
    width = max(4, len(str(max(n - 1, 0))))
    return [f"{name}-{i:0{width}d}" for i in range(n)]


def convert_cell(value: Any, want_cif: bool) -> Converted:
    """Convert one matbench ``structure`` / ``composition`` cell (undecoded JSON) to our fields."""
    from pymatgen.core import Structure

    if isinstance(value, dict) and value.get("@class") == "Structure":
        return convert_structure(lambda: Structure.from_dict(value), want_cif=want_cif)
    if isinstance(value, dict | str) and not want_cif:
        try:
            return Converted(reduced_formula(value), "", "")
        except ValueError:
            return Converted("", "", f"unparsable composition: {value!r}"[:500])
    return Converted("", "", f"unsupported matbench cell: {type(value).__name__}")


@register_source
class MatbenchSource(Source):
    """Download a matbench/matminer dataset and convert it to the card's columns.

    Options (``source.options`` or keywords):
        dataset: matminer dataset name, e.g. ``matbench_mp_e_form`` (alias ``name``). Required.
        target: matbench column for a single-target card (e.g. ``e_form``, ``gap pbe``, ``n``).
        targets: ``{card target name or column: matbench column}`` for several targets.
        url: download URL override (a mirror); default from matminer metadata.
        sha256: expected sha256 of the downloaded file (default from matminer metadata when
            ``dataset`` is known to matminer; ``null`` disables the check).
        cache_dir: where the ``.json.gz`` is kept (default ``$MATMINER_DATA`` or
            ``~/.cache/kappaflow/matbench``); a cached file is reused only if its hash matches.
        progress: tqdm bars (None: only on a terminal).
        retries, backoff, timeout: HTTP retry count, backoff factor (s), timeout (s).
    """

    kind = "matbench"
    option_names = frozenset(
        {
            "dataset",
            "name",
            "target",
            "targets",
            "url",
            "sha256",
            "cache_dir",
            "progress",
            "retries",
            "backoff",
            "timeout",
        }
    )

    def fetch(self, spec: DatasetSpec, dest: Path, data_root: Path, **kw: Any) -> FetchResult:
        """Download (or reuse the cached) dataset file and write the card's table.

        Raises:
            ValueError: bad options, unknown dataset, or a structure card on a composition-only
                matbench set.
            SourceError: HTTP failure. ChecksumMismatchError: the file's hash is wrong.
        """
        opts = self.options(spec, kw)
        name = opts.get("dataset") or opts.get("name")
        if not name:
            raise ValueError(f"dataset {spec.name!r}: matbench source needs option 'dataset'")
        path, sha = self._obtain(str(name), opts)
        df = self._read(path, opts.get("progress"))
        return self._to_table(spec, str(name), df, dest, opts, sha)

    def _obtain(self, name: str, opts: dict[str, Any]) -> tuple[Path, str]:
        meta = matbench_metadata(name)
        url = opts.get("url") or (meta or {}).get("url")
        if not url:
            raise ValueError(
                f"matminer does not know dataset {name!r} and no 'url' option was given; see "
                "matminer.datasets.get_available_datasets()"
            )
        expected = opts["sha256"] if "sha256" in opts else (meta or {}).get("hash")
        file_type = (meta or {}).get("file_type") or "json.gz"
        cache = Path(opts.get("cache_dir") or default_cache_dir()).expanduser()
        path = cache / f"{name}.{file_type}"
        if path.is_file() and (not expected or sha256_file(path) == expected):
            log.info("%s: using cached %s", name, path)
            return path, sha256_file(path)
        session = make_session(int(opts.get("retries", 5)), float(opts.get("backoff", 1.0)))
        log.info("%s: downloading %s", name, url)
        sha = download(
            session,
            str(url),
            path,
            sha256=expected,
            progress=opts.get("progress"),
            timeout=float(opts.get("timeout", 300)),
        )
        return path, sha

    @staticmethod
    def _read(path: Path, progress: bool | None) -> pd.DataFrame:
        from matminer.utils.io import load_dataframe_from_json

        try:
            df = load_dataframe_from_json(str(path), pbar=bool(progress), decode=False)
        except Exception as exc:  # noqa: BLE001 - report which file is unreadable
            raise SourceError(f"cannot read matbench file {path}: {exc}") from exc
        if df is None:
            raise SourceError(f"matbench file {path} is not a pandas JSON table")
        return df

    @staticmethod
    def _to_table(
        spec: DatasetSpec,
        name: str,
        df: pd.DataFrame,
        dest: Path,
        opts: dict[str, Any],
        sha: str,
    ) -> FetchResult:
        import pandas as pd
        from tqdm.auto import tqdm

        if STRUCTURE_COL in df.columns:
            obj_col = STRUCTURE_COL
        elif COMPOSITION_COL in df.columns:
            obj_col = COMPOSITION_COL
            if spec.cif_col:
                raise ValueError(
                    f"dataset {spec.name!r} is a structure card but matbench set {name!r} has "
                    "compositions only"
                )
        else:
            raise SourceError(
                f"matbench set {name!r} has neither a structure nor a composition column"
            )
        candidates = [c for c in df.columns if c not in (STRUCTURE_COL, COMPOSITION_COL)]
        target_map = resolve_targets(spec, opts, {}, candidates)

        want_cif = spec.cif_col is not None
        rows = [
            convert_cell(v, want_cif)
            for v in tqdm(
                df[obj_col].tolist(),
                desc=f"convert {name}",
                unit="row",
                disable=tqdm_disable(opts.get("progress")),
            )
        ]
        out = pd.DataFrame({spec.id_col: ids_for(name, len(df))})
        out[spec.formula_col] = [r.formula for r in rows]
        if spec.cif_col:
            out[spec.cif_col] = [r.cif for r in rows]
        for col, field in target_map.items():
            out[col] = df[field].to_numpy()
        out[FETCH_ERROR_COL] = [r.error for r in rows]
        n_bad = int((out[FETCH_ERROR_COL] != "").sum())
        if n_bad:
            log.warning(
                "%s: %d of %d rows could not be converted (kept, see %s)",
                name,
                n_bad,
                len(out),
                FETCH_ERROR_COL,
            )
        return write_table(out, spec, dest, source=f"matbench:{name} (sha256 {sha})")


__all__ = ["MatbenchSource", "convert_cell", "default_cache_dir", "ids_for", "matbench_metadata"]
