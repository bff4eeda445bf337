"""Encoder/head interface shared by every kappaflow model (see CONTRACT.md, "Model interface")."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from kappaflow.models.heads import MLPHead

#: What an encoder reads: a crystal graph (from a graph cache), a composition vector, or the
#: atom graph of a universal potential (edge vectors within its own cutoff, built on the fly).
InputKind = Literal["graph", "composition", "atoms"]

#: Command that rebuilds the graph caches (``data/graphs/<dataset>.pt``).
REBUILD_GRAPHS = "dvc repro featurize"


#: Rows of a per-crystal element-count matrix: atomic numbers 0..118 (row 0 unused).
N_ELEMENT_ROWS = 119


class GraphMismatchError(ValueError):
    """A graph cache (or graph settings) built differently from what the model card needs."""


def graph_index(batch: Any) -> tuple[torch.Tensor, int]:
    """Node-to-graph index of a PyG batch, also for a single un-batched ``Data``.

    Args:
        batch: a ``torch_geometric`` ``Batch`` (has ``batch``) or a single ``Data``.

    Returns:
        ``(index [n_nodes] int64, n_graphs)``.
    """
    index = getattr(batch, "batch", None)
    if index is None:
        return torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.z.device), 1
    n_graphs = getattr(batch, "num_graphs", None)
    return index, int(n_graphs) if n_graphs is not None else int(index.max()) + 1


def element_counts(batch: Any) -> torch.Tensor:
    """Atoms of each element in each crystal of a graph batch (the cell's composition).

    Args:
        batch: a PyG ``Batch`` or single ``Data`` of crystal graphs (atomic numbers ``z``).

    Returns:
        ``[n_graphs, N_ELEMENT_ROWS]`` float64 counts (column ``Z``: atoms with atomic number Z).

    Raises:
        ValueError: the batch has no atomic numbers (a composition-vector batch) or an atomic
            number outside 1..118.
    """
    z = getattr(batch, "z", None)
    if z is None:
        raise ValueError(
            "element counts need crystal graphs with atomic numbers `z`; this batch has none "
            "(a composition head stacks only on graph encoders)"
        )
    z = z.long()
    if z.numel() and (int(z.min()) < 1 or int(z.max()) >= N_ELEMENT_ROWS):
        raise ValueError(f"atomic numbers outside 1..{N_ELEMENT_ROWS - 1}")
    index, n_graphs = graph_index(batch)
    counts = torch.zeros(n_graphs, N_ELEMENT_ROWS, dtype=torch.float64, device=z.device)
    counts.index_put_((index, z), torch.ones_like(z, dtype=torch.float64), accumulate=True)
    return counts


class Encoder(nn.Module):
    """Base class of all encoders: ``forward(batch) -> [B, embed_dim]`` per-graph embedding.

    Subclasses set:

    * ``embed_dim`` -- width of the embedding;
    * ``blocks`` -- ordered ``nn.ModuleList`` of the repeated interaction blocks (graph
      convolutions, MEGNet blocks, MLP layers), used by :meth:`KappaModel.freeze_encoder`;
    * ``readout`` -- the modules *after* the last block that turn the block output into the
      embedding (pooling, dense layers); ``nn.Identity()`` if none.

    Everything else (input embeddings, distance expansions, pre-block dense layers) is "stem".

    Each encoder class also owns what it reads (class attributes, no instance needed; the
    factory resolves a model card's ``name`` to its encoder class):

    * ``input_kind`` -- ``"graph"`` (crystal graphs of a graph cache), ``"composition"`` or
      ``"atoms"`` (a universal potential's atom graphs, :mod:`kappaflow.graphs.atoms`);
    * ``ships_weights`` -- True if building the encoder loads pretrained weights that come with
      an installed package (a universal potential): strategies then need no pretraining run;
    * ``filters_edges`` -- graph encoders only: True if the encoder drops edges longer than its
      own ``cutoff`` (a cache built with a larger cutoff is fine, e.g. MEGNet), False if it uses
      every edge of the graph (the cache cutoff must equal the card's, e.g. CGCNN).

    :meth:`check_graph_settings` applies that rule to a cache's ``meta``.
    """

    input_kind: ClassVar[InputKind] = "graph"
    filters_edges: ClassVar[bool] = False
    ships_weights: ClassVar[bool] = False

    embed_dim: int
    blocks: nn.ModuleList
    readout: nn.Module

    @classmethod
    def check_graph_settings(
        cls,
        model_cutoff: float | None,
        model_max_neighbors: int | None,
        graph_cutoff: float | None,
        graph_max_neighbors: int | None,
        *,
        model: str = "",
        source: str = "the graph cache",
    ) -> None:
        """Check that graphs built with ``graph_*`` settings suit a card with ``model_*`` ones.

        ``max_neighbors`` must be equal; the graph cutoff must equal the card's cutoff, or be at
        least it for encoders that filter edges themselves (``filters_edges``).

        Args:
            model_cutoff: the model card's ``cutoff``, Å.
            model_max_neighbors: the model card's ``max_neighbors``.
            graph_cutoff: the graphs' cutoff (a cache's ``meta["cutoff"]``), Å.
            graph_max_neighbors: the graphs' ``max_neighbors`` (a cache's ``meta``).
            model: model name, for the message.
            source: what the graphs are (e.g. the cache path), for the message.

        Raises:
            GraphMismatchError: the settings do not fit (names both values and the rebuild
                command).
        """
        if cls.input_kind != "graph":
            return
        who = f"model {model!r}" if model else f"{cls.__name__}"
        hint = f"; rebuild the graph caches with `{REBUILD_GRAPHS}` (conf/graphs reads the card)"
        if model_max_neighbors != graph_max_neighbors:
            raise GraphMismatchError(
                f"{source} was built with max_neighbors={graph_max_neighbors!r} but {who} needs "
                f"max_neighbors={model_max_neighbors!r}{hint}"
            )
        if model_cutoff is None or graph_cutoff is None:
            raise GraphMismatchError(
                f"{source} has cutoff={graph_cutoff!r}, {who} has cutoff={model_cutoff!r}: "
                f"a graph model needs both{hint}"
            )
        g, m = float(graph_cutoff), float(model_cutoff)
        if cls.filters_edges:
            if g < m:
                raise GraphMismatchError(
                    f"{source} was built with cutoff={g} Å but {who} needs cutoff >= {m} Å "
                    f"(it keeps the edges within its own cutoff){hint}"
                )
        elif g != m:
            raise GraphMismatchError(
                f"{source} was built with cutoff={g} Å but {who} needs cutoff={m} Å "
                f"(it uses every edge of the graph){hint}"
            )

    @classmethod
    def weight_files(cls, model_cfg: Any) -> list[Path]:
        """Files outside the project that hold this encoder's weights (``ships_weights``).

        Content keys of cached results include them (:mod:`kappaflow.transfer.fit_predict`).
        """
        return []

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """Return the per-graph embedding ``[B, embed_dim]``."""
        raise NotImplementedError


class KappaModel(nn.Module):
    """A model split into a transferable ``encoder`` and a task-specific ``head``.

    ``forward`` returns predictions in *standardized, transformed* target space (e.g.
    standardized log10 κ, κ in W/m/K); the trainer applies/inverts transforms and scaling.

    Args:
        encoder: module with ``forward(batch) -> [B, embed_dim]`` (an :class:`Encoder`).
        head: :class:`~kappaflow.models.heads.MLPHead` mapping ``[B, embed_dim]`` to
            ``[B, n_targets]``.
        name: model family name (``"cgcnn"``, ``"megnet"``, ``"descriptor_mlp"``).
    """

    def __init__(self, encoder: Encoder, head: MLPHead, name: str = ""):
        super().__init__()
        if head.in_dim != encoder.embed_dim:
            raise ValueError(
                f"head expects {head.in_dim} inputs, encoder gives {encoder.embed_dim}"
            )
        self.encoder = encoder
        self.head = head
        self.name = name
        self._unfrozen_k: int | None = None  # None: encoder not frozen

    @property
    def embed_dim(self) -> int:
        """Width of the per-graph embedding."""
        return int(self.encoder.embed_dim)

    @property
    def n_targets(self) -> int:
        """Number of predicted targets."""
        return int(self.head.n_targets)

    @property
    def encoder_frozen(self) -> bool:
        """Whether :meth:`freeze_encoder` is in effect."""
        return self._unfrozen_k is not None

    def encode(self, batch: Any) -> torch.Tensor:
        """Per-graph embedding ``[B, embed_dim]``."""
        return self.encoder(batch)

    def head_forward(self, embedding: torch.Tensor, batch: Any) -> torch.Tensor:
        """Apply the head to a batch's embedding ``[B, embed_dim]`` (see :meth:`forward`).

        A head with ``reads_composition`` (the stacked head of
        :mod:`kappaflow.models.stack_head`) also gets the crystals' element counts
        (:func:`element_counts`).
        """
        if getattr(self.head, "reads_composition", False):
            return self.head(embedding, element_counts(batch))
        return self.head(embedding)

    def forward(self, batch: Any) -> torch.Tensor:
        """Predictions ``[B, n_targets]`` in standardized transformed target space."""
        return self.head_forward(self.encode(batch), batch)

    def _trainable_encoder_modules(self, unfreeze_last_k: int) -> list[nn.Module]:
        if unfreeze_last_k == 0:
            return []
        return [*self.encoder.blocks[-unfreeze_last_k:], self.encoder.readout]

    def freeze_encoder(self, unfreeze_last_k: int = 0) -> None:
        """Freeze the encoder for transfer learning (the head always stays trainable).

        All encoder parameters get ``requires_grad = False`` except, when
        ``unfreeze_last_k > 0``, those of the last ``unfreeze_last_k`` entries of
        ``encoder.blocks`` *and* of ``encoder.readout`` (the layers after the blocks, which must
        adapt when the blocks below them change). Frozen submodules are also kept in eval mode
        (also after ``model.train()``), so batch-norm running statistics and dropout of the
        frozen part do not change during fine-tuning.

        Args:
            unfreeze_last_k: number of trailing blocks left trainable, ``0..len(blocks)``.

        Raises:
            ValueError: ``unfreeze_last_k`` out of range.
        """
        n_blocks = len(self.encoder.blocks)
        if not 0 <= unfreeze_last_k <= n_blocks:
            raise ValueError(f"unfreeze_last_k must be in [0, {n_blocks}], got {unfreeze_last_k}")
        self.encoder.requires_grad_(False)
        for module in self._trainable_encoder_modules(unfreeze_last_k):
            module.requires_grad_(True)
        self.head.requires_grad_(True)
        self._unfrozen_k = int(unfreeze_last_k)
        self.train(self.training)

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder`: every parameter trainable, normal train/eval modes."""
        self.requires_grad_(True)
        self._unfrozen_k = None
        self.train(self.training)

    def train(self, mode: bool = True) -> KappaModel:
        """Set train/eval mode; frozen encoder parts stay in eval mode (see freeze_encoder)."""
        super().train(mode)
        if mode and self._unfrozen_k is not None:
            self.encoder.eval()
            for module in self._trainable_encoder_modules(self._unfrozen_k):
                module.train()
        return self

    def replace_head(
        self,
        n_targets: int,
        hidden: Sequence[int] | None = None,
        activation: str | None = None,
        dropout: float | None = None,
    ) -> MLPHead:
        """Replace the head by a freshly initialised one (e.g. for a new target set).

        Args:
            n_targets: number of targets of the new head.
            hidden: hidden widths; ``None`` keeps the current head's.
            activation: activation name; ``None`` keeps the current head's.
            dropout: dropout probability; ``None`` keeps the current head's.

        Returns:
            The new head (already attached, on the encoder's device).
        """
        old = self.head
        head = MLPHead(
            self.embed_dim,
            n_targets,
            hidden=old.hidden if hidden is None else hidden,
            activation=old.activation if activation is None else activation,
            dropout=old.dropout if dropout is None else dropout,
        )
        reference = next(iter(self.parameters()), None)
        if reference is not None:
            head = head.to(device=reference.device, dtype=reference.dtype)
        self.head = head
        self.train(self.training)
        return head

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters with ``requires_grad`` (what an optimizer should receive)."""
        return (p for p in self.parameters() if p.requires_grad)

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Count scalar parameters (all, or only trainable ones)."""
        params = self.trainable_parameters() if trainable_only else self.parameters()
        return int(sum(p.numel() for p in params))

    def extra_repr(self) -> str:
        """Show the name and freeze state in ``repr``."""
        frozen = "no" if self._unfrozen_k is None else f"yes (last {self._unfrozen_k} blocks free)"
        return f"name={self.name!r}, embed_dim={self.embed_dim}, encoder_frozen={frozen}"
