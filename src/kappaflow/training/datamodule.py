"""Lightning data module over a graph dataset and split index arrays.

Shuffling uses :class:`EpochSeededSampler`, whose permutation is a pure function of
``(seed, epoch)``: Lightning calls ``set_epoch`` before every training epoch, so a run resumed from
a checkpoint sees exactly the batches an uninterrupted run would have seen.

Under DDP (``trainer.devices > 1``) every loader is sharded here, rank by rank:

* training: the epoch's permutation, padded by repeating its start to a multiple of the world
  size, dealt round-robin (rank ``r`` takes positions ``r, r + W, ...``; Lightning's
  ``DistributedSamplerWrapper``). Step ``k`` of ``W`` ranks with ``batch_size`` B therefore covers
  the same graphs as step ``k`` of one process with batch ``W * B`` when ``W * B`` divides the
  split;
* val/test: the split in order, padded to a multiple of the world size with copies of its first
  graph whose targets are NaN (ignored by the masked metrics), dealt round-robin: every graph is
  evaluated exactly once and every rank runs the same number of batches (DDP's per-forward buffer
  sync needs that). The Lightning module gathers all ranks' rows before computing metrics;
* predict: left to Lightning (an unrepeated distributed sampler).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset
from torch_geometric.loader import DataLoader


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(n)`` determined by ``(seed, epoch)`` only.

    Independent of the global RNG, hence deterministic and resume-safe.

    Args:
        n: number of samples.
        seed: base seed.
        shuffle: if False, yields ``0..n-1`` in order.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (called by Lightning each epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        # Distinct, well-mixed stream per (seed, epoch).
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 7_919 + 17) % (2**63 - 1))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class NaNPaddedSubset(Dataset[Any]):
    """``Subset(dataset, idx)`` followed by copies of its first graph with all targets NaN.

    Args:
        dataset: indexable dataset of PyG ``Data`` with a float ``y``.
        idx: rows of the split (non-empty).
        size: total length (``>= len(idx)``).
    """

    def __init__(self, dataset: Dataset[Any], idx: Sequence[int], size: int) -> None:
        if not idx or size < len(idx):
            raise ValueError("NaNPaddedSubset needs a non-empty split and size >= len(idx)")
        self.dataset = dataset
        self.idx = list(idx)
        self.size = int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:
        if i < len(self.idx):
            return self.dataset[self.idx[i]]
        if i >= self.size:
            raise IndexError(i)
        pad = self.dataset[self.idx[0]].clone()
        pad.y = torch.full_like(pad.y, float("nan"))
        return pad


def _as_index(idx: Sequence[int] | np.ndarray | Tensor | None) -> list[int]:
    if idx is None:
        return []
    return [int(i) for i in np.asarray(idx, dtype=np.int64).reshape(-1)]


def dataset_targets(dataset: Dataset[Any], idx: Sequence[int] | np.ndarray | None = None) -> Tensor:
    """Raw targets ``[N, T]`` (NaN where missing) of ``dataset`` rows ``idx`` (all if None).

    Uses ``dataset.y`` when the dataset exposes a stacked target tensor (graph cache), else
    stacks ``dataset[i].y``.
    """
    rows = _as_index(idx) if idx is not None else list(range(len(dataset)))  # type: ignore[arg-type]
    y_all = getattr(dataset, "y", None)
    if isinstance(y_all, Tensor) and y_all.ndim == 2 and y_all.shape[0] == len(dataset):  # type: ignore[arg-type]
        return y_all[torch.as_tensor(rows, dtype=torch.long)].float()
    return torch.cat([dataset[i].y.reshape(1, -1).float() for i in rows], dim=0)


class GraphDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders (``torch_geometric.loader.DataLoader``) over index splits.

    Args:
        dataset: indexable dataset of PyG ``Data`` (e.g. the graph cache).
        train_idx: row indices of the training split.
        val_idx: row indices of the validation split (early stopping / checkpoint selection).
        test_idx: row indices of the held-out test split (optional).
        predict_idx: rows for ``trainer.predict`` (default: test, else val).
        batch_size: graphs per batch.
        num_workers: DataLoader worker processes (0 = main process).
        seed: shuffling seed (the permutation of epoch ``e`` depends on ``(seed, e)`` only).
        pin_memory: pin host memory (GPU runs).
        eval_batch_size: batch size of val/test/predict loaders (default: ``batch_size``).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        train_idx: Sequence[int] | np.ndarray,
        val_idx: Sequence[int] | np.ndarray,
        test_idx: Sequence[int] | np.ndarray | None = None,
        predict_idx: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.train_idx = _as_index(train_idx)
        self.val_idx = _as_index(val_idx)
        self.test_idx = _as_index(test_idx)
        self.predict_idx = _as_index(predict_idx) if predict_idx is not None else None
        if not self.train_idx:
            raise ValueError("empty training split")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)

    @classmethod
    def from_cfg(
        cls,
        dataset: Dataset[Any],
        train_idx: Sequence[int] | np.ndarray,
        val_idx: Sequence[int] | np.ndarray,
        test_idx: Sequence[int] | np.ndarray | None,
        trainer_cfg: Mapping[str, Any],
        predict_idx: Sequence[int] | np.ndarray | None = None,
    ) -> GraphDataModule:
        """Build from the ``trainer`` config (batch sizes, workers, seed).

        Host memory is pinned when the resolved accelerator is a GPU.
        """
        from kappaflow.training.trainer import resolve_cfg

        cfg = resolve_cfg(trainer_cfg)
        return cls(
            dataset,
            train_idx,
            val_idx,
            test_idx,
            predict_idx,
            batch_size=int(cfg["batch_size"]),
            eval_batch_size=cfg["eval_batch_size"],
            num_workers=int(cfg["num_workers"]),
            seed=int(cfg["seed"]),
            pin_memory=cfg["accelerator"] in ("gpu", "cuda"),
        )

    def train_targets(self) -> Tensor:
        """Return the raw training-split targets ``[N_train, T]`` (fit the transform on these)."""
        return dataset_targets(self.dataset, self.train_idx)

    def _world(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached trainer (``(1, 0)`` without one)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(
        self, idx: list[int], batch_size: int, shuffle: bool, shard: bool = True
    ) -> DataLoader:
        """Loader over ``idx``; with ``shard`` this rank's shard under DDP (module docstring)."""
        world, rank = self._world() if shard else (1, 0)
        subset: Dataset[Any] = Subset(self.dataset, idx)
        sampler: Sampler[int] = EpochSeededSampler(len(idx), seed=self.seed, shuffle=shuffle)
        if world > 1 and shuffle:
            sampler = DistributedSamplerWrapper(
                sampler, num_replicas=world, rank=rank, shuffle=False, drop_last=False
            )
        elif world > 1:
            subset = NaNPaddedSubset(self.dataset, idx, -(-len(idx) // world) * world)
            sampler = DistributedSampler(
                subset, num_replicas=world, rank=rank, shuffle=False, drop_last=False
            )
        return DataLoader(
            subset,  # type: ignore[arg-type]
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded per epoch) training loader."""
        return self._loader(self.train_idx, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Return the validation loader (fixed order)."""
        return self._loader(self.val_idx, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Return the test loader (fixed order)."""
        if not self.test_idx:
            raise ValueError("GraphDataModule has no test split")
        return self._loader(self.test_idx, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Loader over ``predict_idx`` (default: the test split, else the validation split)."""
        idx = self.predict_idx if self.predict_idx is not None else (self.test_idx or self.val_idx)
        return self._loader(idx, self.eval_batch_size, shuffle=False, shard=False)
