"""Universal interatomic potentials (uMLIPs) whose weights ship inside their PyPI wheels.

Nothing is downloaded: :func:`load_calculator` resolves a card to the checkpoint file inside the
installed package and refuses to go on if that file is missing (a package that would fetch it from
the network at run time).  The checkpoint is loaded by the package's own code (``sevenn``); it is
part of an installed, version-pinned dependency, not outside data.

Model cards (:data:`POTENTIALS`):

* ``sevennet-0``: SevenNet-0 (11 Jul 2024), NequIP-style equivariant GNN, 5 Å cutoff, 0.84 M
  parameters, trained on MPtrj (Materials Project relaxation trajectories, PBE/PBE+U, 1.58 M
  frames, 89 elements). Park et al., J. Chem. Theory Comput. 20, 4857 (2024). Matbench
  Discovery κ_SRME (PhononDB-PBE, 103 compounds) ≈ 0.77.
* ``sevennet-l3i5``: SevenNet-l3i5 (l_max 3, 5 interaction layers), same data; κ_SRME ≈ 0.55,
  log10-MAE of phono3py κ against PBE ≈ 0.17 on 103 binaries. About 3-4× slower on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PotentialCard:
    """What a potential is, where its weights come from and what they were trained on.

    Attributes:
        name: key in :data:`POTENTIALS` (and the config value ``phonons.potential``).
        package: the PyPI package that ships code and weights.
        model: the package's name for the checkpoint.
        cutoff: radial cutoff in Å.
        elements: number of elements covered by the training data.
        training_data: what the weights were fitted to.
        reference: citation.
    """

    name: str
    package: str
    model: str
    cutoff: float
    elements: int
    training_data: str
    reference: str


POTENTIALS: dict[str, PotentialCard] = {
    "sevennet-0": PotentialCard(
        name="sevennet-0",
        package="sevenn",
        model="7net-0",
        cutoff=5.0,
        elements=89,
        training_data="MPtrj (PBE/PBE+U relaxation trajectories of the Materials Project, 1.58 M)",
        reference="Park et al., J. Chem. Theory Comput. 20, 4857 (2024)",
    ),
    "sevennet-l3i5": PotentialCard(
        name="sevennet-l3i5",
        package="sevenn",
        model="7net-l3i5",
        cutoff=5.0,
        elements=89,
        training_data="MPtrj (PBE/PBE+U relaxation trajectories of the Materials Project, 1.58 M)",
        reference="Park et al., J. Chem. Theory Comput. 20, 4857 (2024); l_max 3, 5 layers",
    ),
}


def potential_card(name: str) -> PotentialCard:
    """Return the card of a potential.

    Raises:
        KeyError: unknown name, listing the known ones.
    """
    if name not in POTENTIALS:
        raise KeyError(f"unknown potential {name!r}; known: {sorted(POTENTIALS)}")
    return POTENTIALS[name]


def checkpoint_path(name: str) -> Path:
    """Path of the checkpoint inside the installed wheel.

    Raises:
        KeyError: unknown potential.
        ImportError: the package is not installed (a dependency of kappaflow: ``pip install -e .``).
        FileNotFoundError: the wheel does not contain the weights (they would be downloaded).
    """
    card = potential_card(name)
    try:
        from sevenn.util import pretrained_name_to_path
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            f"potential {name!r} needs the {card.package!r} package (a kappaflow dependency): "
            "pip install -e ."
        ) from err
    import sevenn._const as const

    relative = {
        "7net-0": const.SEVENNET_0_11Jul2024,
        "7net-l3i5": const.SEVENNET_l3i5,
    }[card.model]
    path = Path(relative)
    if not path.is_file():
        raise FileNotFoundError(
            f"{card.package} has no bundled weights for {card.model!r} at {path}; "
            "kappaflow never downloads weights at run time"
        )
    # Same file sevenn itself resolves the keyword to (guards against a changed mapping).
    resolved = Path(pretrained_name_to_path(card.model))
    if resolved.resolve() != path.resolve():
        raise FileNotFoundError(f"{card.package} resolves {card.model!r} to {resolved}, not {path}")
    return path


def load_calculator(name: str, device: str = "cpu") -> Any:
    """Build the ASE calculator of a potential from its bundled checkpoint.

    Args:
        name: key of :data:`POTENTIALS`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).

    Returns:
        An ``ase.calculators.calculator.Calculator`` (energies eV, forces eV/Å, stress eV/Å³).
    """
    import warnings

    path = checkpoint_path(name)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings():
        # sevenn warns that no tensor-product accelerator (cuEquivariance) is installed.
        warnings.simplefilter("ignore")
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model=str(path), device=device)
