"""A universal interatomic potential as a κ encoder: SevenNet's interaction layers, pooled.

SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)) is a NequIP-style equivariant
GNN trained on MPtrj (1.58 M PBE/PBE+U frames of Materials Project relaxations, 89 elements) to
predict energies, forces and stresses. Its weights ship inside the ``sevenn`` wheel
(:func:`kappaflow.phonons.potential.checkpoint_path`; nothing is downloaded). The encoder keeps
the potential's stem (element one-hot -> features, edge embedding) and its interaction layers
(``blocks``), drops the energy readout, and pools the **scalar (l = 0) channels after every
interaction layer** over the atoms (mean), concatenated: SevenNet-0 gives 5 × 128 = 640 numbers
per crystal, from the near-element-wise first layer to the last, most force-field-specific one.

Strategies use it like any encoder (``conf/models/sevennet.yaml``; ``conf/transfer/sevennet.yaml``):
``features`` (frozen, ridge / random forest / stack on the pooled layers) and ``finetune`` (κ
head, every weight trained at ``lr * encoder_lr_mult``). The weights are pretrained already, so a
strategy on this encoder names no pretraining run (``pretrained: null``).

Input: :func:`kappaflow.graphs.atoms.crystal_to_atom_graph` (edge vectors within the potential's
5 Å cutoff, built by sevenn's own neighbour search). Elements outside the potential's 89 raise.

Measured on the κ sets (``reports/transfer.md``; 5×3 grouped folds) — see the model card.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.utils import scatter

from kappaflow.models.base import Encoder, KappaModel, graph_index
from kappaflow.models.heads import MLPHead
from kappaflow.phonons.potential import checkpoint_path, potential_card

_LAYER = re.compile(r"^(\d+)_")


@functools.lru_cache(maxsize=4)
def _network(potential: str) -> nn.Module:
    """Build the potential's network from its bundled checkpoint (loaded once per process).

    The checkpoint is read by the package's own loader (it is part of the installed, pinned
    dependency, like the phonon calculator's, :mod:`kappaflow.phonons.potential`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tensor-product accelerator (cuEquivariance)
        from sevenn.util import model_from_checkpoint

        net, _ = model_from_checkpoint(str(checkpoint_path(potential)))
    return net.eval()


def _scalar_index(irreps: str) -> list[int]:
    """Feature columns of the even scalars (``0e``) of an e3nn irreps string."""
    from e3nn.o3 import Irreps

    columns: list[int] = []
    for mul_ir, part in zip(Irreps(irreps), Irreps(irreps).slices(), strict=True):
        if mul_ir.ir.l == 0 and mul_ir.ir.p == 1:
            columns.extend(range(part.start, part.stop))
    return columns


class SevenNetEncoder(Encoder):
    """SevenNet interaction layers -> per-layer mean-pooled scalar features ``[B, embed_dim]``.

    Args:
        potential: key of :data:`kappaflow.phonons.potential.POTENTIALS` (``sevennet-0``,
            ``sevennet-l3i5``).
        cutoff: neighbour radius of the input graphs, Å; must be the potential's own.
        pool_layers: interaction layers whose scalars are pooled (0-based; None: all).

    Raises:
        ValueError: a cutoff other than the potential's, or a layer it does not have.
    """

    #: Reads the potential's own atom graphs (edge vectors), not the crystal-graph cache.
    input_kind = "atoms"
    #: The weights come with the package: strategies need no pretraining run.
    ships_weights = True

    def __init__(
        self,
        potential: str = "sevennet-0",
        cutoff: float = 5.0,
        pool_layers: list[int] | None = None,
    ) -> None:
        super().__init__()
        card = potential_card(potential)
        if float(cutoff) != card.cutoff:
            raise ValueError(
                f"{potential} was trained with a {card.cutoff} Å cutoff; the card says {cutoff}"
            )
        net = copy.deepcopy(_network(potential))
        modules = list(net._modules.items())
        first = next(i for i, (name, _) in enumerate(modules) if _LAYER.match(name))
        n_layers = 1 + max(int(m[1]) for name, _ in modules if (m := _LAYER.match(name)))
        self.stem = nn.ModuleList(module for _, module in modules[:first])
        self.blocks = nn.ModuleList(
            nn.Sequential(*(m for name, m in modules if name.startswith(f"{i}_")))
            for i in range(n_layers)
        )
        self.readout = nn.Identity()  # pooling has no weights; the energy readout is dropped
        layers = list(range(n_layers)) if pool_layers is None else [int(k) for k in pool_layers]
        if not layers or any(not 0 <= k < n_layers for k in layers):
            raise ValueError(f"pool_layers must be in 0..{n_layers - 1}, got {pool_layers}")
        self.pool_layers = layers
        self._scalars = {
            k: torch.as_tensor(
                _scalar_index(str(net.get_irreps_in(f"{k}_equivariant_gate", "irreps_out")))
            )
            for k in layers
        }
        self.register_buffer("z_to_type", net.z_to_onehot_tensor.clone(), persistent=True)
        self.potential = potential
        self.embed_dim = int(sum(len(v) for v in self._scalars.values()))

    @classmethod
    def weight_files(cls, model_cfg: Any) -> list[Path]:
        """Return the bundled checkpoint of the card's potential."""
        return [checkpoint_path(str(model_cfg.get("potential") or "sevennet-0"))]

    @property
    def elements(self) -> list[int]:
        """Atomic numbers the potential was trained on."""
        return [int(z) for z in torch.nonzero(self.z_to_type >= 0).flatten()]

    def atom_types(self, z: torch.Tensor) -> torch.Tensor:
        """Return the potential's type index of each atomic number ``z`` (int64 tensor).

        Raises:
            ValueError: an element the potential was not trained on (names its Z).
        """
        z = torch.as_tensor(z, dtype=torch.long, device=self.z_to_type.device)
        known = (z >= 0) & (z < len(self.z_to_type))
        types = torch.where(known, self.z_to_type[z.clamp(0, len(self.z_to_type) - 1)], -1)
        if bool((types < 0).any()):
            bad = sorted({int(v) for v in z[types < 0].tolist()})
            raise ValueError(
                f"elements Z={bad} are outside {self.potential}'s training set "
                f"({len(self.elements)} elements)"
            )
        return types

    def forward(self, batch: Any) -> torch.Tensor:
        """Embed a batch of atom graphs (:func:`kappaflow.graphs.atoms.crystal_to_atom_graph`).

        Returns:
            ``[B, embed_dim]``: per pooled layer, the mean over the crystal's atoms of its scalar
            channels, concatenated in layer order.

        Raises:
            ValueError: an element the potential was not trained on.
        """
        from sevenn import _keys as KEY

        data = copy.copy(batch)  # the potential's modules write their results into the batch
        z = data[KEY.ATOMIC_NUMBERS].long()
        data[KEY.NODE_FEATURE] = self.atom_types(z)
        for module in self.stem:
            data = module(data)
        index, n_graphs = graph_index(batch)
        pooled = []
        for k, block in enumerate(self.blocks):
            data = block(data)
            if k in self._scalars:
                x = data[KEY.NODE_FEATURE][:, self._scalars[k].to(z.device)]
                pooled.append(scatter(x, index, dim=0, dim_size=n_graphs, reduce="mean"))
            if k == max(self.pool_layers):
                break
        return torch.cat(pooled, dim=1)


def build_sevennet(
    n_targets: int,
    potential: str = "sevennet-0",
    cutoff: float = 5.0,
    pool_layers: list[int] | None = None,
    head_hidden: list[int] | None = None,
    head_activation: str = "silu",
    head_dropout: float = 0.0,
) -> KappaModel:
    """Build a SevenNet-encoder :class:`~kappaflow.models.base.KappaModel` (pretrained weights).

    Args:
        n_targets: number of regression targets.
        potential: the bundled potential (:data:`kappaflow.phonons.potential.POTENTIALS`).
        cutoff: its cutoff, Å (checked).
        pool_layers: interaction layers pooled into the embedding (None: all).
        head_hidden: hidden widths of the head MLP (None: ``[128]``).
        head_activation: the head's activation.
        head_dropout: dropout in the head.

    Returns:
        The model: encoder weights of the potential, a fresh head.
    """
    encoder = SevenNetEncoder(potential, cutoff, pool_layers)
    hidden = [128] if head_hidden is None else [int(h) for h in head_hidden]
    head = MLPHead(encoder.embed_dim, n_targets, hidden, head_activation, head_dropout)
    return KappaModel(encoder, head, name="sevennet")
