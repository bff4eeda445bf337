"""``aflow`` source: AFLOW entries with AGL κ through the AFLUX REST API, plus their structures.

1. Page through ``<base_url>?<query>,<fields>,$paging(p,n),format(json)`` (AFLUX) collecting
   ``auid, aurl, compound, species`` and the target keyword(s), by default
   ``agl_thermal_conductivity_300K`` (AGL κ_L at 300 K, W/m/K) of the ICSD catalogue.
2. For each entry fetch its structure file from the entry folder named by ``aurl``
   (``aflowlib.duke.edu:AFLOWDATA/ICSD_WEB/FCC/Ag1Br1_ICSD_56546`` →
   ``http://aflowlib.duke.edu/AFLOWDATA/ICSD_WEB/FCC/Ag1Br1_ICSD_56546/CONTCAR.relax.vasp``) and
   convert it to a P1 CIF with pymatgen.

Requests are retried with exponential backoff on connection errors and HTTP 429/5xx. A failed
page query is an error; an entry whose structure cannot be downloaded or parsed is kept with an
empty CIF and the reason in ``fetch_error`` (the prepare stage quarantines it) — rows are never
dropped. Rows are sorted by ``auid`` so the output bytes do not depend on the server's order.
AFLOW data are free for scientific, academic and non-commercial use only.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kappaflow.data.sources.base import (
    FETCH_ERROR_COL,
    Converted,
    FetchResult,
    Source,
    SourceError,
    convert_structure,
    formula_or_empty,
    http_get,
    make_session,
    register_source,
    resolve_targets,
    tqdm_disable,
    write_table,
)

if TYPE_CHECKING:
    import requests
    from pymatgen.core import Structure

    from kappaflow.cards import DatasetSpec

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://aflow.org/API/aflux/"
DEFAULT_QUERY = "$catalog(ICSD),agl_thermal_conductivity_300K(*)"
DEFAULT_FIELDS: tuple[str, ...] = ("auid", "aurl", "compound", "species")
DEFAULT_STRUCTURE_FILE = "CONTCAR.relax.vasp"
#: Card target name -> AFLUX keyword.
DEFAULT_TARGETS: dict[str, str] = {"kappa": "agl_thermal_conductivity_300K"}
_INDEX_KEY = re.compile(r"^\s*(\d+)\s+of\s+\d+\s*$")


def aflux_url(base_url: str, query: str, fields: list[str], page: int, page_size: int) -> str:
    """Return the AFLUX URL of one page (keywords already in ``query`` are not repeated)."""
    present = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", query))
    extra = [f for f in fields if f not in present]
    parts = [p for p in (query.strip(","), ",".join(extra)) if p]
    return f"{base_url}?{','.join(parts)},$paging({page},{page_size}),format(json)"


def parse_aflux_page(text: str, url: str) -> list[dict[str, Any]]:
    """Return the entries of one AFLUX JSON page (a list, or a dict keyed ``"i of N"``).

    Raises:
        SourceError: the body is not JSON or not a list of entries (e.g. an error message).
    """
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise SourceError(f"AFLUX returned non-JSON from {url}: {text[:200]!r}") from exc
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):

        def index(key: str) -> int:
            m = _INDEX_KEY.match(key)
            return int(m.group(1)) if m else 0

        data = [data[k] for k in sorted(data, key=index)]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise SourceError(f"unexpected AFLUX response from {url}: {text[:200]!r}")
    return data


def structure_url(aurl: str, filename: str, files_base_url: str | None = None) -> str:
    """Return the URL of ``filename`` in the entry folder ``aurl`` (``host:AFLOWDATA/...``).

    Args:
        aurl: AFLOW URL of the entry.
        filename: file name; ``{entry}`` is replaced by the entry folder name.
        files_base_url: replaces ``http://<host>`` of the aurl (a mirror or a test server).

    Raises:
        ValueError: ``aurl`` has no ``:AFLOWDATA/`` part.
    """
    host, sep, rel = aurl.partition(":AFLOWDATA/")
    if not sep or not rel:
        raise ValueError(f"cannot build a file URL from aurl {aurl!r}")
    rel = rel.strip("/")
    name = filename.format(entry=rel.rsplit("/", 1)[-1])
    base = files_base_url.rstrip("/") if files_base_url else f"http://{host}"
    return f"{base}/AFLOWDATA/{rel}/{name}"


def parse_species(value: Any) -> list[str]:
    """Return AFLUX ``species`` (list or comma string) as a list of element symbols."""
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value or [] if str(v).strip()]


def parse_structure(text: str, filename: str, species: list[str]) -> Structure:
    """Parse an AFLOW structure file: CIF by extension, else POSCAR/CONTCAR.

    VASP4-style files (no element line) get ``species`` inserted as their element line.
    """
    from pymatgen.core import Structure
    from pymatgen.io.vasp import Poscar

    if filename.lower().endswith(".cif"):
        return Structure.from_str(text, fmt="cif")
    lines = text.splitlines()
    counts = lines[5].split() if len(lines) > 5 else []
    if counts and all(tok.isdigit() for tok in counts):  # VASP4: counts right after the lattice
        if len(species) != len(counts):
            raise ValueError(f"VASP4 file with {len(counts)} species counts but species={species}")
        text = "\n".join([*lines[:5], " ".join(species), *lines[5:]]) + "\n"
    return Poscar.from_str(text).structure


@register_source
class AflowSource(Source):
    """AFLUX query + per-entry structure download.

    Options (``source.options`` or keywords):
        base_url: AFLUX endpoint (default ``https://aflow.org/API/aflux/``).
        query: AFLUX filter (default ``$catalog(ICSD),agl_thermal_conductivity_300K(*)``).
        fields: keywords to return (default ``auid, aurl, compound, species``; target keywords
            are added).
        target / targets: card target -> AFLUX keyword (default ``kappa`` ->
            ``agl_thermal_conductivity_300K``).
        page_size: entries per page (default 1000). max_pages: stop after this many pages.
        structure_file: file in the entry folder (default ``CONTCAR.relax.vasp``; the ICSD CIF
            is ``{entry}.cif``).
        files_base_url: replaces ``http://<host>`` of each aurl for structure downloads.
        workers: parallel structure downloads (default 8).
        retries, backoff, timeout: HTTP retries, backoff factor (s), timeout (s).
        progress: tqdm bars (None: only on a terminal).
    """

    kind = "aflow"
    option_names = frozenset(
        {
            "base_url",
            "query",
            "fields",
            "target",
            "targets",
            "page_size",
            "max_pages",
            "structure_file",
            "files_base_url",
            "workers",
            "retries",
            "backoff",
            "timeout",
            "progress",
        }
    )

    def fetch(self, spec: DatasetSpec, dest: Path, data_root: Path, **kw: Any) -> FetchResult:
        """Query AFLUX, download structures, write the card's table.

        Raises:
            SourceError: a page request failed after retries, a page was malformed, or no
                structure at all could be downloaded (likely a wrong ``files_base_url``).
        """
        import pandas as pd

        opts = self.options(spec, kw)
        target_map = resolve_targets(spec, opts, DEFAULT_TARGETS, ())
        fields = list(
            dict.fromkeys([*(opts.get("fields") or DEFAULT_FIELDS), *target_map.values()])
        )
        workers = max(1, int(opts.get("workers", 8)))
        session = make_session(
            int(opts.get("retries", 5)), float(opts.get("backoff", 1.0)), pool_size=workers
        )
        timeout = float(opts.get("timeout", 120))
        entries = self.query(session, opts, fields, timeout)
        entries.sort(key=lambda e: str(e.get("auid") or e.get("aurl") or ""))

        filename = str(opts.get("structure_file") or DEFAULT_STRUCTURE_FILE)
        want_cif = spec.cif_col is not None
        convs = self.structures(session, entries, filename, opts, want_cif, workers, timeout)

        out = pd.DataFrame(
            {spec.id_col: [str(e.get("auid") or e.get("aurl") or "") for e in entries]}
        )
        out[spec.formula_col] = [c.formula for c in convs]
        if spec.cif_col:
            out[spec.cif_col] = [c.cif for c in convs]
        for col, field in target_map.items():
            out[col] = [e.get(field) for e in entries]
        out["aurl"] = [e.get("aurl") for e in entries]
        out["compound"] = [e.get("compound") for e in entries]
        out[FETCH_ERROR_COL] = [c.error for c in convs]
        dupes = int(out[spec.id_col].duplicated().sum())
        if dupes:
            log.warning("aflow: %d duplicated auids across pages (kept)", dupes)
        return write_table(
            out,
            spec,
            dest,
            source=f"aflow:{opts.get('base_url') or DEFAULT_BASE_URL} "
            f"{opts.get('query') or DEFAULT_QUERY}",
        )

    @staticmethod
    def query(
        session: requests.Session, opts: dict[str, Any], fields: list[str], timeout: float
    ) -> list[dict[str, Any]]:
        """Return all AFLUX entries of the query, page by page (stops at a short or empty page)."""
        from tqdm.auto import tqdm

        base_url = str(opts.get("base_url") or DEFAULT_BASE_URL)
        query = str(opts.get("query") or DEFAULT_QUERY)
        page_size = int(opts.get("page_size", 1000))
        max_pages = opts.get("max_pages")
        entries: list[dict[str, Any]] = []
        page = 1
        with tqdm(
            desc="AFLUX pages", unit="page", disable=tqdm_disable(opts.get("progress"))
        ) as bar:
            while max_pages is None or page <= int(max_pages):
                url = aflux_url(base_url, query, fields, page, page_size)
                batch = parse_aflux_page(http_get(session, url, timeout=timeout).text, url)
                entries.extend(batch)
                bar.update(1)
                bar.set_postfix(entries=len(entries))
                if len(batch) < page_size:
                    break
                page += 1
        log.info("aflow: %d entries from %d page(s)", len(entries), page)
        return entries

    @staticmethod
    def structures(
        session: requests.Session,
        entries: list[dict[str, Any]],
        filename: str,
        opts: dict[str, Any],
        want_cif: bool,
        workers: int,
        timeout: float,
    ) -> list[Converted]:
        """Download and convert each entry's structure (order preserved; failures recorded)."""
        from tqdm.auto import tqdm

        files_base = opts.get("files_base_url")

        def one(entry: dict[str, Any]) -> Converted:
            compound = entry.get("compound")
            try:
                url = structure_url(str(entry.get("aurl") or ""), filename, files_base)
                text = http_get(session, url, timeout=timeout).text
            except (SourceError, ValueError) as exc:
                return Converted(
                    formula_or_empty(compound),
                    "",
                    f"structure_download_failed: {exc}"[:500],
                )
            species = parse_species(entry.get("species"))
            return convert_structure(
                lambda: parse_structure(text, filename, species), compound, want_cif=want_cif
            )

        with ThreadPoolExecutor(max_workers=workers) as pool:
            convs = list(
                tqdm(
                    pool.map(one, entries),
                    total=len(entries),
                    desc="AFLOW structures",
                    unit="file",
                    disable=tqdm_disable(opts.get("progress")),
                )
            )
        failed = [c for c in convs if c.error]
        if entries and len(failed) == len(entries):
            raise SourceError(
                f"aflow: none of {len(entries)} structure files could be fetched/parsed; first "
                f"error: {failed[0].error}"
            )
        if failed:
            log.warning(
                "aflow: %d of %d structures failed (kept with empty CIF, see %s)",
                len(failed),
                len(entries),
                FETCH_ERROR_COL,
            )
        return convs


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_QUERY",
    "AflowSource",
    "aflux_url",
    "parse_aflux_page",
    "parse_species",
    "parse_structure",
    "structure_url",
]
