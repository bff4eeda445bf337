"""``mp_api`` source: Materials Project summary documents through ``mp_api.client.MPRester``.

``mp-api`` is an optional dependency (``pip install kappaflow[mp]``). The API key is read from
the ``MP_API_KEY`` environment variable (or the ``api_key`` keyword). Documents are requested as
plain dicts (``use_document_model=False``), paginated by the client (``chunk_size``), and each
structure is rebuilt with ``Structure.from_dict`` on its own: a document whose structure is
missing or malformed is written with an empty CIF and the reason in ``fetch_error`` (its formula
then comes from ``formula_pretty``), never dropped. Rows are sorted by material id so the output
bytes do not depend on the server's order.

A search always carries a criterion (default ``deprecated=False``): with no criterion the client
would bulk-download the whole collection from AWS S3 instead of querying the REST endpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kappaflow.data.sources.base import (
    FETCH_ERROR_COL,
    FetchResult,
    MissingDependencyError,
    Source,
    SourceError,
    convert_structure,
    natural_key,
    register_source,
    resolve_targets,
    tqdm_disable,
    write_table,
)

if TYPE_CHECKING:
    from kappaflow.cards import DatasetSpec

log = logging.getLogger(__name__)

API_KEY_ENV = "MP_API_KEY"
INSTALL_HINT = "pip install kappaflow[mp]"
ID_FIELD = "material_id"
STRUCTURE_FIELD = "structure"
FORMULA_FIELD = "formula_pretty"
#: Card target name -> MP summary field.
DEFAULT_TARGETS: dict[str, str] = {
    "e_form": "formation_energy_per_atom",
    "band_gap": "band_gap",
}
DEFAULT_FIELDS: tuple[str, ...] = (ID_FIELD, STRUCTURE_FIELD, FORMULA_FIELD) + tuple(
    DEFAULT_TARGETS.values()
)


def import_mprester() -> type:
    """Return ``mp_api.client.MPRester``.

    Raises:
        MissingDependencyError: ``mp-api`` is not installed (says ``pip install kappaflow[mp]``).
    """
    try:
        from mp_api.client import MPRester
    except ImportError as exc:
        raise MissingDependencyError(
            f"the mp_api source needs the optional 'mp-api' package: {INSTALL_HINT} "
            f"(import failed: {exc})"
        ) from exc
    return MPRester


def api_key_from_env(explicit: str | None = None) -> str:
    """Return ``explicit`` or ``$MP_API_KEY``.

    Raises:
        SourceError: neither is set (message says how to get and export a key).
    """
    key = explicit or os.environ.get(API_KEY_ENV)
    if not key:
        raise SourceError(
            f"the mp_api source needs a Materials Project API key: set the {API_KEY_ENV} "
            "environment variable (get a key at https://materialsproject.org/api)"
        )
    return key


@register_source
class MPApiSource(Source):
    """Query the Materials Project summary endpoint and write the card's table.

    Options (``source.options`` or keywords):
        criteria: keyword arguments of ``MPRester().materials.summary.search`` (default
            ``{"deprecated": False}``; e.g. ``{"num_elements": [1, 3]}``). Must be non-empty.
        fields: extra summary fields to request and keep as columns (``material_id``,
            ``structure``, ``formula_pretty`` and the target fields are always requested).
        target / targets: card target -> summary field (defaults: ``e_form`` ->
            ``formation_energy_per_atom``, ``band_gap`` -> ``band_gap``).
        chunk_size: documents per request (default 1000). num_chunks: stop after this many
            requests (None: all).
        endpoint: API base URL (default: the client's, ``https://api.materialsproject.org/``).
        api_key: overrides ``$MP_API_KEY`` (prefer the environment variable).
        progress: client progress bars (None: on).
    """

    kind = "mp_api"
    option_names = frozenset(
        {
            "criteria",
            "fields",
            "target",
            "targets",
            "chunk_size",
            "num_chunks",
            "endpoint",
            "api_key",
            "progress",
        }
    )

    def fetch(self, spec: DatasetSpec, dest: Path, data_root: Path, **kw: Any) -> FetchResult:
        """Search, convert and write.

        Raises:
            SourceError: no API key, empty criteria, or an API error.
            MissingDependencyError: ``mp-api`` not installed.
        """
        import pandas as pd
        from pymatgen.core import Structure
        from tqdm.auto import tqdm

        opts = self.options(spec, kw)
        key = api_key_from_env(opts.get("api_key"))
        mprester = import_mprester()
        raw_criteria = opts.get("criteria")
        criteria = {"deprecated": False} if raw_criteria is None else dict(raw_criteria)
        if not any(v is not None and not str(k).startswith("_") for k, v in criteria.items()):
            raise SourceError(
                "mp_api: 'criteria' needs at least one search criterion; without one the client "
                "bulk-downloads the whole collection from S3"
            )
        target_map = resolve_targets(spec, opts, DEFAULT_TARGETS, ())
        extra = [f for f in opts.get("fields") or () if f not in DEFAULT_FIELDS]
        fields = list(
            dict.fromkeys([ID_FIELD, STRUCTURE_FIELD, FORMULA_FIELD, *target_map.values(), *extra])
        )

        progress = opts.get("progress")
        client_kw: dict[str, Any] = {
            "api_key": key,
            "use_document_model": False,
            "mute_progress_bars": progress is False,
        }
        if opts.get("endpoint"):
            client_kw["endpoint"] = str(opts["endpoint"])
        try:
            with mprester(**client_kw) as mpr:
                docs = mpr.materials.summary.search(
                    fields=fields,
                    all_fields=False,
                    chunk_size=int(opts.get("chunk_size", 1000)),
                    num_chunks=opts.get("num_chunks"),
                    **criteria,
                )
        except Exception as exc:  # MPRestError and requests errors carry the URL/status
            raise SourceError(
                f"Materials Project query failed: {type(exc).__name__}: {exc}"
            ) from exc

        docs = sorted((dict(d) for d in docs), key=lambda d: natural_key(str(d.get(ID_FIELD, ""))))
        want_cif = spec.cif_col is not None
        rows = []
        for doc in tqdm(docs, desc="convert mp", unit="doc", disable=tqdm_disable(progress)):
            sdict = doc.get(STRUCTURE_FIELD)
            conv = convert_structure(
                lambda s=sdict: Structure.from_dict(s) if s else _raise("no structure in document"),
                fallback_formula=doc.get(FORMULA_FIELD),
                want_cif=want_cif,
            )
            rows.append(conv)
        out = pd.DataFrame({spec.id_col: [str(d.get(ID_FIELD, "")) for d in docs]})
        out[spec.formula_col] = [r.formula for r in rows]
        if spec.cif_col:
            out[spec.cif_col] = [r.cif for r in rows]
        for col, field in target_map.items():
            out[col] = [d.get(field) for d in docs]
        for field in extra:
            out[field] = [d.get(field) for d in docs]
        out[FETCH_ERROR_COL] = [r.error for r in rows]
        where = opts.get("endpoint") or "materials project"
        return write_table(out, spec, dest, source=f"mp_api:{where} summary {criteria}")


def _raise(message: str) -> Any:
    raise ValueError(message)


__all__ = ["API_KEY_ENV", "DEFAULT_TARGETS", "MPApiSource", "api_key_from_env", "import_mprester"]
