"""Downloader interface: :class:`Source`, :class:`FetchResult`, the ``SOURCES`` registry.

Every source turns one dataset card (:class:`~kappaflow.cards.DatasetSpec`) into the same
thing: a gzip CSV at ``dest`` with the card's columns (``id_col``, ``formula_col``, ``cif_col`` for
structure sets, one column per ``TargetSpec.column``). The file is written atomically
(:func:`kappaflow.io_utils.atomic_write`: temporary file in the destination folder +
``os.replace``) with deterministic bytes (gzip ``mtime=0``, no file name in the gzip header, LF
line ends), so DVC hashes are stable across runs.

Downloaders never drop rows silently: a row whose structure cannot be fetched or converted is
written with an empty CIF (and empty formula if none could be derived) and the reason in the
:data:`FETCH_ERROR_COL` column, so that the prepare stage quarantines it with that reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kappaflow.data.validation import reduced_formula
from kappaflow.io_utils import atomic_write

if TYPE_CHECKING:
    import pandas as pd
    import requests
    from pymatgen.core import Structure

    from kappaflow.cards import DatasetSpec

log = logging.getLogger(__name__)

#: Extra column written by downloaders: empty when the row converted cleanly, else the reason.
FETCH_ERROR_COL = "fetch_error"

#: HTTP statuses worth retrying (rate limiting and transient server/gateway errors).
RETRY_STATUSES: tuple[int, ...] = (429, 500, 502, 503, 504)

_CHUNK = 1 << 20


class SourceError(RuntimeError):
    """A dataset could not be fetched (HTTP failure, bad response, bad configuration)."""


class ChecksumMismatchError(SourceError):
    """A file's sha256 differs from the expected one."""


class MissingDependencyError(ImportError):
    """An optional dependency needed by a source is not installed."""


@dataclass(frozen=True)
class FetchResult:
    """Outcome of :func:`fetch`.

    Attributes:
        path: the written gzip CSV.
        sha256: sha256 (hex) of the written file's bytes.
        n_rows: number of data rows (materials) in the file.
        source: human-readable description of where the rows came from.
    """

    path: Path
    sha256: str
    n_rows: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (``path`` as a string)."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class Source(ABC):
    """A way of obtaining a dataset's raw table.

    Subclasses set :attr:`kind` (the ``source.kind`` of dataset cards they serve) and
    :attr:`option_names` (accepted keys of ``source.options`` / keyword overrides), and implement
    :meth:`fetch`.
    """

    kind: ClassVar[str]
    option_names: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def fetch(self, spec: DatasetSpec, dest: Path, data_root: Path, **kw: Any) -> FetchResult:
        """Write ``spec``'s raw table to ``dest`` (gzip CSV) and describe it.

        Args:
            spec: the dataset card.
            dest: output path (``.csv.gz``); its folder must exist.
            data_root: root of the curated data mirror.
            **kw: run-time options; they override ``spec.source.options``.
        """

    def options(self, spec: DatasetSpec, kw: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``spec.source.options`` with run-time keywords and reject unknown keys.

        Raises:
            ValueError: on an option this source does not understand (typo guard).
        """
        opts = {**dict(spec.source.options or {}), **dict(kw)}
        unknown = sorted(set(opts) - self.option_names)
        if unknown:
            raise ValueError(
                f"dataset {spec.name!r}: source {self.kind!r} does not accept option(s) {unknown}; "
                f"accepted: {sorted(self.option_names)}"
            )
        return opts


#: Registry of sources by ``source.kind``; filled by :func:`register_source`.
SOURCES: dict[str, Source] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Instantiate ``cls`` and register it under ``cls.kind`` in :data:`SOURCES` (decorator)."""
    SOURCES[cls.kind] = cls()
    return cls


def fetch(
    spec: DatasetSpec,
    dest: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    prefer_mirror: bool = True,
    **kw: Any,
) -> FetchResult:
    """Write dataset ``spec``'s raw table to ``dest`` (gzip CSV) via ``spec.source.kind``.

    Args:
        spec: the dataset card.
        dest: output ``.csv.gz`` path (parent folders are created).
        data_root: root of the curated data mirror (``kappaflow.layout.data_root()``).
        prefer_mirror: for a downloading source (``matbench``, ``mp_api``, ``aflow``), copy the
            curated mirror file ``data_root / spec.path`` instead when it exists, so the pipeline
            is reproducible offline; set False to force the download.
        **kw: source options overriding ``spec.source.options`` (see each source), plus
            ``progress`` (bool or None: tqdm bars; None = only on a terminal).

    Returns:
        What was written.

    Raises:
        KeyError: unknown ``spec.source.kind``.
    """
    dest_p, root = Path(dest), Path(data_root)
    kind = spec.source.kind
    if kind not in SOURCES:
        raise KeyError(
            f"dataset {spec.name!r}: unknown source kind {kind!r}; known {sorted(SOURCES)}"
        )
    dest_p.parent.mkdir(parents=True, exist_ok=True)
    if kind != "mirror" and prefer_mirror and (root / spec.path).is_file():
        log.info(
            "%s: mirror copy %s exists; copying it instead of the %s download "
            "(prefer_mirror=False to download)",
            spec.name,
            root / spec.path,
            kind,
        )
        progress = kw.get("progress")
        return SOURCES["mirror"].fetch(spec, dest_p, root, progress=progress)
    return SOURCES[kind].fetch(spec, dest_p, root, **kw)


# --------------------------------------------------------------------------------------------
# Files and hashes
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the sha256 hex digest of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(actual: str, expected: str | None, what: str, expected_from: str) -> None:
    """Raise :class:`ChecksumMismatchError` (naming both hashes) if ``expected`` differs."""
    if expected and actual.lower() != expected.lower():
        raise ChecksumMismatchError(
            f"sha256 mismatch for {what}: expected {expected.lower()} ({expected_from}), "
            f"got {actual}. The file is corrupt or changed; restore it or update the expected hash."
        )


def output_columns(spec: DatasetSpec) -> list[str]:
    """Columns the card expects, in order: id, formula, cif (structure sets), target columns."""
    cols = [spec.id_col, spec.formula_col]
    if spec.cif_col:
        cols.append(spec.cif_col)
    cols += [t.column for t in spec.targets if t.column not in cols]
    return cols


def write_table(df: pd.DataFrame, spec: DatasetSpec, dest: Path, source: str) -> FetchResult:
    """Write ``df`` as the card's gzip CSV at ``dest``, atomically and byte-reproducibly.

    Args:
        df: one row per material with at least :func:`output_columns` (extra columns such as
            :data:`FETCH_ERROR_COL` are kept after them).
        spec: the dataset card.
        dest: output path.
        source: description for :class:`FetchResult`.

    Raises:
        ValueError: if an expected column is missing.
    """
    cols = output_columns(spec)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"dataset {spec.name!r}: table lacks column(s) {missing}")
    out = df[cols + [c for c in df.columns if c not in cols]]

    def write(tmp: Path) -> None:
        # filename="" keeps the temporary name out of the gzip header; mtime=0 fixes the stamp.
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
        ):
            out.to_csv(text, index=False, lineterminator="\n")

    atomic_write(dest, write)
    return FetchResult(path=dest, sha256=sha256_file(dest), n_rows=len(out), source=source)


# --------------------------------------------------------------------------------------------
# Conversions (never raise: a failed row keeps an empty CIF and its reason)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converted:
    """Result of converting one upstream structure/composition.

    Attributes:
        formula: pymatgen reduced formula, ``""`` if unknown.
        cif: CIF text (pymatgen ``CifWriter``, P1), ``""`` if unavailable.
        error: ``""`` on success, else the reason (goes to :data:`FETCH_ERROR_COL`).
    """

    formula: str
    cif: str
    error: str


def formula_or_empty(formula: Any) -> str:
    """Reduced formula of an upstream formula / composition dict, ``""`` if absent or unparsable.

    For a row whose structure failed: it is quarantined by its error anyway, the formula is only
    informative, so downloaders never raise here (unlike
    :func:`kappaflow.data.validation.reduced_formula`).
    """
    if formula is None or formula == "":
        return ""
    try:
        return reduced_formula(formula if isinstance(formula, Mapping) else str(formula))
    except ValueError:
        return ""


def convert_structure(
    load: Callable[[], Structure], fallback_formula: Any = None, want_cif: bool = True
) -> Converted:
    """Run ``load()`` and turn its Structure into (reduced formula, P1 CIF), capturing failures.

    Args:
        load: zero-argument callable building the pymatgen ``Structure`` (may raise).
        fallback_formula: formula used when the structure fails (e.g. upstream ``compound``).
        want_cif: also write the CIF (False for composition-only cards).

    Returns:
        A :class:`Converted`; on failure ``cif`` is empty and ``error`` says why.
    """
    from pymatgen.io.cif import CifWriter

    try:
        structure = load()
        if len(structure) == 0:
            raise ValueError("structure has no sites")
        formula = structure.composition.reduced_formula
        cif = str(CifWriter(structure)) if want_cif else ""
        return Converted(formula, cif, "")
    except Exception as exc:  # noqa: BLE001 - recorded per row, never dropped
        return Converted(
            formula_or_empty(fallback_formula),
            "",
            f"structure_conversion_failed: {type(exc).__name__}: {exc}"[:500],
        )


def resolve_targets(
    spec: DatasetSpec,
    options: Mapping[str, Any],
    defaults: Mapping[str, str],
    available: Sequence[str],
) -> dict[str, str]:
    """Map each target column of the card to an upstream field.

    Lookup order per target: ``options["targets"][t.name]`` or ``[t.column]``, then
    ``options["target"]`` (single-target cards only), then ``defaults[t.name]``, then the only
    upstream field left when there is exactly one.

    Args:
        spec: the dataset card.
        options: source options (``targets`` mapping and/or ``target`` string).
        defaults: built-in mapping ``TargetSpec.name -> upstream field`` of the source.
        available: upstream fields that can serve as targets.

    Returns:
        ``{TargetSpec.column: upstream field}``.

    Raises:
        ValueError: if a target cannot be mapped or maps to an unknown field.
    """
    mapping = dict(options.get("targets") or {})
    single = options.get("target")
    if single is not None and len(spec.targets) != 1:
        raise ValueError(
            f"dataset {spec.name!r}: option 'target' needs exactly one card target; "
            f"use 'targets: {{name: field}}' for {spec.target_names}"
        )
    out: dict[str, str] = {}
    for t in spec.targets:
        field = mapping.get(t.name, mapping.get(t.column, single))
        if field is None:
            field = defaults.get(t.name)
        if field is None and len(spec.targets) == 1 and len(available) == 1:
            field = available[0]
        if field is None:
            raise ValueError(
                f"dataset {spec.name!r}: no upstream field for target {t.name!r}; set "
                f"source.options.targets.{t.name} to one of {list(available)}"
            )
        if available and field not in available:
            raise ValueError(
                f"dataset {spec.name!r}: target {t.name!r} maps to unknown field {field!r}; "
                f"available: {list(available)}"
            )
        out[t.column] = str(field)
    return out


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders embedded integers numerically (``mp-9`` before ``mp-10``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def make_session(
    retries: int = 5, backoff: float = 1.0, user_agent: str = "kappaflow", pool_size: int = 10
) -> requests.Session:
    """Build a ``requests.Session`` retrying GETs with exponential backoff on transient failures.

    Args:
        retries: retries per request (connection errors and :data:`RETRY_STATUSES`).
        backoff: urllib3 ``backoff_factor`` in seconds (sleep ``backoff * 2**(n-1)``).
        user_agent: ``User-Agent`` header.
        pool_size: connections kept per host (at least the number of threads sharing it).
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, pool_size))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


def http_get(
    session: requests.Session, url: str, *, timeout: float = 60.0, stream: bool = False
) -> requests.Response:
    """GET ``url``; raise :class:`SourceError` naming the URL and status on failure.

    Retries (see :func:`make_session`) happen inside ``session``; this raises once they are spent.
    """
    import requests

    try:
        resp = session.get(url, timeout=timeout, stream=stream)
    except requests.RequestException as exc:
        raise SourceError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        body = "" if stream else resp.text[:300].strip()
        resp.close()
        raise SourceError(f"GET {url} returned HTTP {resp.status_code} {resp.reason}: {body}")
    return resp


def download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool | None = None,
    timeout: float = 120.0,
) -> str:
    """Stream ``url`` to ``dest`` atomically with a tqdm bar; verify ``sha256`` when given.

    Returns:
        sha256 of the downloaded bytes.

    Raises:
        SourceError: HTTP failure.
        ChecksumMismatchError: digest differs from ``sha256`` (``dest`` is not written).
    """
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    resp = http_get(session, url, timeout=timeout, stream=True)
    total = int(resp.headers.get("Content-Length") or 0) or None

    def write(tmp: Path) -> None:
        with (
            open(tmp, "wb") as f,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"download {dest.name}",
                disable=None if progress is None else not progress,
            ) as bar,
        ):
            for chunk in resp.iter_content(chunk_size=_CHUNK):
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        check_sha256(h.hexdigest(), sha256, f"download {url}", "dataset metadata")

    with resp:
        atomic_write(dest, write)
    return h.hexdigest()


def tqdm_disable(progress: bool | None) -> bool | None:
    """Map a ``progress`` option to tqdm's ``disable`` (None: bars only on a terminal)."""
    return None if progress is None else not progress
