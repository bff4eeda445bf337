"""What a model eats: graph caches, Magpie vectors or atom graphs.

Graph caches for the GNNs, Magpie vectors for the descriptor MLP, atom graphs (edge vectors,
built on the fly) for universal-potential encoders.

Shared by the pretraining and fine-tuning stages so that both read data the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torch_geometric.data import Data

from kappaflow.config import to_plain
from kappaflow.models.factory import check_graph_settings, input_kind

__all__ = [
    "ListDataset",
    "ModelInputs",
    "RowsView",
    "TargetView",
    "input_kind",  # re-exported: owned by the model classes (kappaflow.models.factory)
    "load_model_inputs",
]


class TargetView(Dataset):
    """A dataset whose ``y`` keeps only some target columns (e.g. ``e_form`` of ``[e_form, gap]``).

    Args:
        base: dataset of PyG ``Data`` with ``y [1, T_all]``; may expose a stacked ``y [N, T_all]``.
        columns: target column indices to keep, in order.
    """

    def __init__(self, base: Dataset, columns: Sequence[int]):
        self.base = base
        self.columns = torch.as_tensor(list(columns), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    @property
    def y(self) -> torch.Tensor:
        """Stacked targets ``[N, T]`` of the kept columns."""
        y_all = getattr(self.base, "y", None)
        if isinstance(y_all, torch.Tensor) and y_all.ndim == 2:
            return y_all[:, self.columns]
        return torch.cat([self[i].y for i in range(len(self))], dim=0)

    def __getitem__(self, i: int) -> Data:
        data = self.base[i].clone()
        data.y = data.y.reshape(1, -1)[:, self.columns]
        return data


class RowsView(Dataset):
    """Rows ``idx`` of a dataset, in that order (no copy)."""

    def __init__(self, base: Dataset, idx: Sequence[int] | np.ndarray):
        self.base, self.idx = base, np.asarray(idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Data:
        return self.base[int(self.idx[i])]


class ListDataset(Dataset):
    """A list of ``Data`` with a stacked ``y`` (composition inputs)."""

    def __init__(self, items: list[Data]):
        self.items = items
        self.y = torch.cat([d.y.reshape(1, -1) for d in items], dim=0) if items else torch.empty(0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Data:
        return self.items[i]


@dataclass
class ModelInputs:
    """A dataset aligned row-by-row with its prepared table.

    Attributes:
        dataset: PyG ``Data`` items with ``y [1, T]`` in raw units (κ in W/m/K).
        table: the prepared rows (``id``, ``formula``, ``spacegroup``, targets), same order.
        target_names: names of the ``y`` columns.
        features: ``[N, F]`` descriptor matrix for composition models (None for graphs).
    """

    dataset: Dataset
    table: pd.DataFrame
    target_names: list[str]
    features: np.ndarray | None = None


def _atom_graphs(
    model_cfg: Mapping[str, Any] | DictConfig, table: pd.DataFrame, names: Sequence[str]
) -> ListDataset:
    """Atom graphs of every row (the card's ``cutoff``), with the rows' raw targets."""
    from kappaflow.graphs.atoms import crystal_to_atom_graph
    from kappaflow.structure.crystal import CrystalArrays

    missing = [c for c in ("lattice", "numbers", "frac_coords") if c not in table.columns]
    if missing:
        raise ValueError(f"atom graphs need the prepared structures; the table lacks {missing}")
    cutoff = float(to_plain(model_cfg)["cutoff"])
    y = table[list(names)].to_numpy(dtype=np.float64)
    rows = zip(table["lattice"], table["numbers"], table["frac_coords"], table["id"], strict=True)
    return ListDataset(
        [
            crystal_to_atom_graph(CrystalArrays.from_row(lat, num, frac), cutoff, y[i], str(mid))
            for i, (lat, num, frac, mid) in enumerate(rows)
        ]
    )


def load_model_inputs(
    model_cfg: Mapping[str, Any] | DictConfig,
    table: pd.DataFrame,
    target_names: Sequence[str],
    graph_cache: Path | None,
) -> ModelInputs:
    """Build the dataset a model trains on from a prepared table.

    Args:
        model_cfg: model card (``conf/models/*.yaml``).
        table: prepared rows (``data/interim/<ds>/valid.parquet``) with the target columns.
        target_names: targets to learn, in order.
        graph_cache: ``data/graphs/<ds>.pt`` (graph models only). Atom-graph models
            (``input_kind`` ``atoms``) build theirs from the table's structures
            (:func:`kappaflow.graphs.atoms.crystal_to_atom_graph`, the card's cutoff).

    Raises:
        ValueError: if the graph cache does not hold exactly the table's materials, or a target
            is missing.
        GraphMismatchError: (a ValueError) the cache's ``meta`` cutoff / max_neighbors do not
            fit the model card (:func:`kappaflow.models.check_graph_settings`).
    """
    names = list(target_names)
    missing = [t for t in names if t not in table.columns]
    if missing:
        raise ValueError(f"targets {missing} not in the prepared table ({list(table.columns)})")
    if input_kind(model_cfg) == "composition":
        from kappaflow.features.composition import magpie_features
        from kappaflow.models.descriptor_mlp import composition_data

        feats = dict(to_plain(model_cfg).get("features") or {})
        X = magpie_features(table["formula"].tolist(), extras=feats.get("extras", ()))
        y = table[names].to_numpy(dtype=np.float64)
        items = [
            composition_data(X[i], y[i], str(mid)) for i, mid in enumerate(table["id"].tolist())
        ]
        return ModelInputs(ListDataset(items), table.reset_index(drop=True), names, X)
    if input_kind(model_cfg) == "atoms":
        return ModelInputs(
            _atom_graphs(model_cfg, table, names), table.reset_index(drop=True), names
        )

    from kappaflow.graphs.cache import load_graph_cache

    if graph_cache is None or not Path(graph_cache).is_file():
        raise FileNotFoundError(f"graph cache {graph_cache} missing: run `dvc repro featurize`")
    graphs = load_graph_cache(graph_cache)
    check_graph_settings(model_cfg, graphs.meta, source=f"graph cache {graph_cache}")
    cache_targets = list(graphs.meta.get("target_names", []))
    cols = []
    for t in names:
        if t not in cache_targets:
            raise ValueError(f"target {t!r} not in graph cache {graph_cache} ({cache_targets})")
        cols.append(cache_targets.index(t))
    position = {mid: i for i, mid in enumerate(graphs.ids)}
    try:
        rows = [position[str(mid)] for mid in table["id"].tolist()]
    except KeyError as err:
        raise ValueError(
            f"material {err} of the prepared table is not in {graph_cache}: "
            "the cache is stale, rerun `dvc repro featurize`"
        ) from err
    return ModelInputs(TargetView(graphs.subset(rows), cols), table.reset_index(drop=True), names)
