"""A κ model ensemble (k-fold or multi-seed members): crystals in, log10 κ ± σ out.

Members are one-file exports (:func:`kappaflow.training.export.save_model`, read with
``torch.load(weights_only=True)``) of the same architecture and head type, each predicting
standardized log10 κ (κ in W/m/K): the fold models of one transfer strategy. The ``features``
strategy's members are its frozen encoder plus its scikit-learn regressor stored as arrays
(:mod:`kappaflow.models.sklearn_head`; nothing is unpickled), whose output is log10 κ itself
(identity standardization). For every crystal the ensemble returns

* ``log10_kappa``: the mean over members of log10 κ (so κ = 10**log10_kappa is the geometric
  mean of the members' κ, W/m/K);
* ``sigma_log10``: the sample standard deviation (ddof = 1) over members of log10 κ, in log10
  units (decades): how much the members disagree, not a calibrated interval (that is
  :attr:`KappaEnsemble.calibration`). A one-member ensemble has no spread: σ is NaN;
* ``embedding``: member 0's encoder embedding (used for the out-of-domain distance).

Graph members get the crystal graph of :func:`kappaflow.graphs.build.crystal_to_graph` with the
ensemble's graph settings (those of the graph caches they were trained on: ``graphs.cutoff``,
``graphs.max_neighbors``); composition members get the Magpie vector of the formula.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from kappaflow.evaluation.calibration import Calibration
from kappaflow.models.factory import check_graph_settings, input_kind
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.training.target_transform import TargetTransform

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class GraphSettings:
    """How crystals become graphs (must equal the graph caches the members were trained on).

    Attributes:
        cutoff: neighbour radius, Å.
        max_neighbors: nearest neighbours kept per atom (None: all within ``cutoff``).
    """

    cutoff: float
    max_neighbors: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"cutoff": float(self.cutoff), "max_neighbors": self.max_neighbors}


@dataclass(frozen=True)
class EnsembleOutput:
    """Predictions of a batch of B crystals by M members.

    Attributes:
        members_log10: [B, M] log10 κ of every member (κ in W/m/K).
        log10_kappa: [B] mean over members of log10 κ.
        sigma_log10: [B] sample std (ddof = 1) over members of log10 κ (NaN when M = 1).
        embedding: [B, D] member 0's encoder embedding.
    """

    members_log10: np.ndarray
    log10_kappa: np.ndarray
    sigma_log10: np.ndarray
    embedding: np.ndarray


def shared_encoders(members: Sequence[nn.Module]) -> list[int]:
    """For each member, the index of the first member with an identical encoder.

    Identical: same encoder class and bit-identical parameters and buffers. Members without an
    ``encoder`` attribute map to themselves.
    """

    def signature(m: nn.Module) -> tuple[Any, ...] | None:
        enc = getattr(m, "encoder", None)
        if not isinstance(enc, nn.Module):
            return None
        return (type(enc), tuple(enc.state_dict().items()))

    def same(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
        if a is None or b is None or a[0] is not b[0] or len(a[1]) != len(b[1]):
            return False
        return all(
            ka == kb and ta.shape == tb.shape and ta.dtype == tb.dtype and torch.equal(ta, tb)
            for (ka, ta), (kb, tb) in zip(a[1], b[1], strict=True)
        )

    sigs = [signature(m) for m in members]
    out: list[int] = []
    for k, sig in enumerate(sigs):
        out.append(next((j for j in sorted(set(out)) if same(sigs[j], sig)), k))
    return out


class KappaEnsemble:
    """Members of one architecture that predict log10 κ; see the module docstring.

    Args:
        members: the models (``KappaModel``), in eval mode.
        transforms: their target transforms (one ``log10`` target each).
        model_cfg: the shared model card (plain dict; its ``name`` gives the input kind,
            :func:`kappaflow.models.input_kind`).
        graph: graph settings for graph members (checked against the card with
            :func:`kappaflow.models.check_graph_settings`).
        device: where inference runs (``"auto"``: CUDA when available).

    Raises:
        ValueError: no member, or a member whose single target is not log10-transformed.
        GraphMismatchError: ``graph`` does not fit the card (graph members only).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        transforms: Sequence[TargetTransform],
        model_cfg: dict[str, Any],
        graph: GraphSettings,
        device: str | torch.device = "auto",
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for k, tf in enumerate(transforms):
            if tf.n_targets != 1 or tf.transforms[0] != "log10":
                raise ValueError(
                    f"member {k}: expected one log10 target (κ), got {tf.names}/{tf.transforms}"
                )
        if len(members) == 1:
            log.warning("one-member ensemble: σ (spread over members) is NaN")
        self.device = resolve_device(device)
        self.members = [m.to(self.device).eval() for m in members]
        self.transforms = [t.to(self.device) for t in transforms]
        self.model_cfg = dict(model_cfg)
        self.graph = graph
        self.input_kind = input_kind(self.model_cfg)
        #: Conformal κ intervals (set from the registered version; None: uncalibrated).
        self.calibration: Calibration | None = None
        #: ``encoder_of[k]``: the first member whose encoder equals member k's (same class,
        #: same parameters and buffers): a frozen encoder shared by every fold (the
        #: ``features`` / ``stack`` strategies) is run once per batch, not once per member.
        self.encoder_of = shared_encoders(self.members)
        check_graph_settings(
            self.model_cfg, graph.to_dict(), source="the ensemble's graph settings"
        )

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | Path],
        graph: GraphSettings,
        device: str | torch.device = "auto",
    ) -> KappaEnsemble:
        """Load members written by :func:`kappaflow.training.export.save_model`.

        Raises:
            ValueError: members of different architectures (model cards other than docs) or
                head types (MLP vs scikit-learn ridge / random forest heads); a member file
                that :func:`~kappaflow.training.export.load_model` refuses (not weights-only,
                unsupported or tampered head).
        """
        from kappaflow.training.export import load_model

        if not paths:
            raise ValueError("no member files given")
        members, transforms, cards, heads = [], [], [], []
        for p in paths:
            model, tf, info = load_model(p, map_location="cpu")
            members.append(model)
            transforms.append(tf)
            cards.append({k: v for k, v in info["model_cfg"].items() if k != "description"})
            heads.append(type(getattr(model, "head", None)).__name__)
        if any(c != cards[0] for c in cards[1:]):
            raise ValueError(f"ensemble members {list(map(str, paths))} differ in architecture")
        if len(set(heads)) > 1:
            raise ValueError(f"ensemble members {list(map(str, paths))} mix heads {heads}")
        return cls(members, transforms, cards[0], graph, device)

    def to(self, device: str | torch.device) -> KappaEnsemble:
        """Move every member to ``device`` (``"auto"``: CUDA when available); returns self."""
        self.device = resolve_device(device)
        self.members = [m.to(self.device) for m in self.members]
        self.transforms = [t.to(self.device) for t in self.transforms]
        return self

    @property
    def n_members(self) -> int:
        """Number of members M."""
        return len(self.members)

    def featurize(self, crystal: CrystalArrays, material_id: str = "", formula: str = "") -> Data:
        """Model input of one crystal: graph, atom graph, or Magpie vector of ``formula``.

        Args:
            crystal: the crystal.
            material_id: stored as ``material_id``.
            formula: reduced formula (composition members only; derived from the crystal if "").
        """
        if self.input_kind == "atoms":  # a universal potential's graph, its own cutoff
            from kappaflow.graphs.atoms import crystal_to_atom_graph

            # an element outside the potential fails this crystal here, not the whole batch
            self.members[0].encoder.atom_types(torch.from_numpy(crystal.numbers.astype("int64")))

            return crystal_to_atom_graph(
                crystal, float(self.model_cfg["cutoff"]), material_id=str(material_id)
            )
        if self.input_kind == "graph":
            from kappaflow.graphs.build import crystal_to_graph

            return crystal_to_graph(
                crystal,
                self.graph.cutoff,
                self.graph.max_neighbors,
                material_id=str(material_id),
            )
        from kappaflow.data.validation import structure_formula
        from kappaflow.features.composition import magpie_features
        from kappaflow.models.descriptor_mlp import composition_data

        feats = dict(self.model_cfg.get("features") or {})
        x = magpie_features([formula or structure_formula(crystal)], feats.get("extras", ()))
        return composition_data(x[0], None, str(material_id))

    @torch.inference_mode()
    def predict(self, items: Sequence[Data]) -> EnsembleOutput:
        """Predict one batch of featurized crystals (all at once: choose the batch size)."""
        n = len(items)
        if n == 0:
            empty = np.zeros(0)
            return EnsembleOutput(np.zeros((0, self.n_members)), empty, empty, np.zeros((0, 0)))
        batch = Batch.from_data_list(list(items)).to(self.device)
        logs, embedding = [], None
        encoded: dict[int, torch.Tensor] = {}
        for k, (model, tf) in enumerate(zip(self.members, self.transforms, strict=True)):
            source = self.encoder_of[k]
            if source not in encoded:
                encoded[source] = model.encode(batch)
            emb = encoded[source]
            if k == 0:
                embedding = emb.float().cpu().numpy()
            z = model.head_forward(emb, batch).float()
            logs.append(tf.unstandardize(z)[:, 0].double().cpu().numpy())
        members = np.stack(logs, axis=1)
        sigma = members.std(axis=1, ddof=1) if self.n_members > 1 else np.full(n, np.nan)
        assert embedding is not None
        return EnsembleOutput(members, members.mean(axis=1), sigma, embedding)
