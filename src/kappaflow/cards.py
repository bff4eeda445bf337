"""Dataset registry: typed views of the ``conf/data/*.yaml`` dataset cards.

Each dataset card says where the raw table lives (relative to the data root), which columns hold
the id / formula / CIF / targets, the target units and transforms (log10 for κ in W/m/K), the
fidelity and temperature, the role the set plays in the pipeline, and where it comes from upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

Transform = Literal["none", "log10"]
Kind = Literal["structure", "composition"]


@dataclass(frozen=True)
class TargetSpec:
    """One regression target of a dataset.

    Attributes:
        name: canonical name used in prepared tables (e.g. ``kappa``, ``e_form``).
        column: column of the raw table.
        unit: physical unit of the raw values (e.g. ``W/m/K``, ``eV/atom``).
        transform: ``log10`` (κ: models learn log10 κ) or ``none``.
        positive: values must be > 0 (required for ``log10``).
        min: values below are quarantined (``target_out_of_range``); ``None`` for no bound.
        max: values above are quarantined; ``None`` for no bound.
        required: rows with a missing value are quarantined; if False, missing stays NaN
            (multi-target sets where not every row has every label).
    """

    name: str
    column: str
    unit: str
    transform: Transform = "none"
    positive: bool = False
    min: float | None = None
    max: float | None = None
    required: bool = True

    def __post_init__(self) -> None:
        if self.transform not in ("none", "log10"):
            raise ValueError(f"target {self.name!r}: unknown transform {self.transform!r}")
        if self.transform == "log10" and not self.positive:
            raise ValueError(f"target {self.name!r}: log10 transform requires positive: true")


@dataclass(frozen=True)
class SourceSpec:
    """Where the raw table comes from.

    Attributes:
        kind: ``mirror`` (copy from the data root), ``matbench`` (matminer ``load_dataset``),
            ``mp_api`` (Materials Project, needs ``MP_API_KEY``) or ``aflow`` (AFLUX API).
        options: downloader-specific options (e.g. matbench dataset name, AFLUX query).
    """

    kind: str = "mirror"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset card.

    Attributes:
        name: registry key (also the DVC foreach key and the folder name under ``data/``).
        path: raw file relative to the data root (``.csv.gz``).
        kind: ``structure`` (has CIFs) or ``composition`` (formula only).
        id_col: column with a unique material id.
        formula_col: column with the (reduced) formula.
        cif_col: column with CIF text, ``None`` for composition-only sets.
        targets: regression targets; may be empty for unlabeled pools.
        fidelity: e.g. ``high`` (phono3py-grade), ``low`` (AGL), ``dft``.
        temperature_k: temperature of κ values in K, ``None`` when not applicable.
        role: pipeline role (``pretrain``, ``finetune_lf``, ``finetune_hq``, ``screen``, ...).
        description: one-paragraph human description.
        citation: references to cite.
        sha256: expected sha256 of the raw file (from the mirror's MANIFEST), or ``None``.
        source: upstream/downloader spec.
        max_rows: prepare only a seeded sample of this many raw rows (``None``: every row).
            For the smoke experiment (``conf/experiment/smoke.yaml``): it never changes what
            ``ingest`` copies, only what ``prepare`` validates and every later stage sees.
    """

    name: str
    path: str
    kind: Kind
    id_col: str
    formula_col: str
    cif_col: str | None
    targets: tuple[TargetSpec, ...]
    fidelity: str = ""
    temperature_k: float | None = None
    role: str = ""
    description: str = ""
    citation: str = ""
    sha256: str | None = None
    source: SourceSpec = field(default_factory=SourceSpec)
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("structure", "composition"):
            raise ValueError(f"dataset {self.name!r}: unknown kind {self.kind!r}")
        if self.max_rows is not None and (
            isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
            or self.max_rows < 1
        ):  # fmt: skip
            raise ValueError(f"dataset {self.name!r}: max_rows must be a positive integer or null")
        if self.kind == "structure" and not self.cif_col:
            raise ValueError(f"dataset {self.name!r}: structure datasets need columns.cif")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: duplicate target names {names}")

    @property
    def target_names(self) -> list[str]:
        """Names of the targets, in card order."""
        return [t.name for t in self.targets]

    def target(self, name: str) -> TargetSpec:
        """Return the target called ``name`` (``KeyError`` listing the available ones)."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"dataset {self.name!r} has no target {name!r}; has {self.target_names}")


def spec_from_cfg(cfg: DictConfig | Mapping[str, Any], name: str | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from one dataset card (a ``conf/data/*.yaml`` node).

    Args:
        cfg: the card.
        name: registry key; defaults to ``cfg.name``.

    Raises:
        ValueError: if a required key is missing or a value is invalid.
    """
    raw: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)  # type: ignore[assignment]
    )
    key = name or raw.get("name")
    if not key:
        raise ValueError("dataset card has no name")
    for required in ("path", "kind", "columns"):
        if required not in raw:
            raise ValueError(f"dataset card {key!r} lacks {required!r}")
    cols = raw["columns"]
    targets = tuple(
        TargetSpec(name=t_name, **t_cfg) for t_name, t_cfg in (raw.get("targets") or {}).items()
    )
    src = raw.get("source") or {}
    return DatasetSpec(
        name=str(key),
        path=str(raw["path"]),
        kind=raw["kind"],
        id_col=cols.get("id", "id"),
        formula_col=cols.get("formula", "formula"),
        cif_col=cols.get("cif"),
        targets=targets,
        fidelity=str(raw.get("fidelity", "")),
        temperature_k=raw.get("temperature_k"),
        role=str(raw.get("role", "")),
        description=str(raw.get("description", "")),
        citation=str(raw.get("citation", "")),
        sha256=raw.get("sha256"),
        source=SourceSpec(kind=src.get("kind", "mirror"), options=src.get("options", {}) or {}),
        max_rows=raw.get("max_rows"),
    )


def registry_from_cfg(cfg: DictConfig) -> dict[str, DatasetSpec]:
    """Return every dataset card under ``cfg.datasets`` keyed by name."""
    return {name: spec_from_cfg(node, name) for name, node in cfg.datasets.items()}
