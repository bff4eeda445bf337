"""Model-test helpers: small varied crystals (pymatgen, built in code), graphs, training."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from kappaflow.graphs.build import crystal_to_graph
from kappaflow.layout import project_root
from kappaflow.structure.crystal import CrystalArrays


def _fcc(a: float) -> Lattice:
    """Primitive fcc lattice for a conventional cubic constant ``a`` (Å)."""
    h = a / 2
    return Lattice([[0, h, h], [h, 0, h], [h, h, 0]])


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure(_fcc(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zincblende(a: float, cation: str, anion: str) -> Structure:
    return Structure(_fcc(a), [cation, anion], [[0, 0, 0], [0.25, 0.25, 0.25]])


def perovskite(a: float, a_site: str, b_site: str, x: str) -> Structure:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), [a_site, b_site, x, x, x], frac)


def bcc(a: float, el: str) -> Structure:
    return Structure(Lattice.cubic(a), [el, el], [[0, 0, 0], [0.5, 0.5, 0.5]])


def sixteen_structures() -> list[Structure]:
    """16 distinct crystals: 4 rocksalt, 4 zincblende, 4 perovskite, 4 bcc."""
    return [
        rocksalt(5.64, "Na", "Cl"),
        rocksalt(4.21, "Mg", "O"),
        rocksalt(6.46, "Pb", "Te"),
        rocksalt(4.03, "Li", "F"),
        zincblende(5.65, "Ga", "As"),
        zincblende(5.41, "Zn", "S"),
        zincblende(6.48, "In", "Sb"),
        zincblende(4.78, "B", "As"),
        perovskite(3.905, "Sr", "Ti", "O"),
        perovskite(4.00, "Ba", "Ti", "O"),
        perovskite(4.02, "K", "Nb", "O"),
        perovskite(5.60, "Cs", "Pb", "I"),
        bcc(2.87, "Fe"),
        bcc(3.16, "W"),
        bcc(4.29, "Na"),
        bcc(3.30, "Nb"),
    ]


def graph_of(s: Structure, cutoff: float, max_neighbors: int | None, n_targets: int = 2):
    return crystal_to_graph(
        CrystalArrays.from_structure(s), cutoff, max_neighbors, y=[0.0] * n_targets
    )


def batch_of(
    structures: list[Structure], cutoff: float, max_neighbors: int | None, n_targets: int = 2
) -> Batch:
    return Batch.from_data_list([graph_of(s, cutoff, max_neighbors, n_targets) for s in structures])


def overfit(
    model: torch.nn.Module,
    batch: object,
    targets: torch.Tensor,
    max_steps: int = 300,
    lr: float = 3e-3,
    check_every: int = 25,
    stop_ratio: float = 0.01,
) -> tuple[float, float]:
    """Full-batch Adam on ``batch``; return (initial, final) MSE, both measured in eval mode.

    Stops early once the eval-mode MSE is below ``stop_ratio`` x the initial one (keeps the
    tests fast); runs at most ``max_steps`` steps.
    """

    def eval_mse() -> float:
        model.eval()
        with torch.no_grad():
            return torch.mean((model(batch) - targets) ** 2).item()

    initial = final = eval_mse()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        model.train()
        opt.zero_grad()
        torch.mean((model(batch) - targets) ** 2).backward()
        opt.step()
        if step % check_every == 0 or step == max_steps:
            final = eval_mse()
            if final < stop_ratio * initial:
                break
    return initial, final


def permute_sites(s: Structure, seed: int = 0) -> Structure:
    """The same crystal with its sites in a (non-identity) random order."""
    order = np.random.default_rng(seed).permutation(len(s))
    if len(s) > 1 and np.all(order == np.arange(len(s))):
        order = np.roll(order, 1)
    return Structure(s.lattice, [s[i].specie for i in order], s.frac_coords[order])


def load_model_cfg(name: str) -> DictConfig:
    """The committed model card ``conf/models/<name>.yaml``."""
    return OmegaConf.load(project_root() / "conf" / "models" / f"{name}.yaml")


def random_targets(n: int, t: int, seed: int = 123) -> torch.Tensor:
    """Standard-normal targets ``[n, t]`` (standardized target space)."""
    return torch.randn(n, t, generator=torch.Generator().manual_seed(seed))
