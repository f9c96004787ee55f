"""Datasets over packed arrays, the epoch samplers, and the Lightning DataModule that trains on them.

Every draw of an epoch (the order of a shuffle, the images a balanced epoch draws, the objects a stream
simulates) is a function of (seed, epoch) only, so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would. Under DDP every rank computes the same draw and takes its own share of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from .cache import open_packed

SAMPLINGS = ("shuffle", "balanced")


def epoch_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, *keys), e.g. (seed, epoch) or (seed, epoch, rank): distinct tuples, independent streams."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class PackedDataset(Dataset):
    """Images from a packed (N, C, H, W) .npy, opened lazily so each DataLoader worker maps it itself."""

    def __init__(self, packed_path: Path, labels: np.ndarray):
        self.packed_path = Path(packed_path)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None:
            self._images = open_packed(self.packed_path)
        return torch.from_numpy(np.array(self._images[index])), self.labels[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


class EpochSampler(Sampler[int]):
    """The indices of one epoch, a pure function of (seed, epoch) (Lightning calls `set_epoch`).

    shuffle: a permutation, each image once. balanced: len(labels) draws with replacement, every class equally
    likely. With `world_size` > 1 each rank takes every world_size-th index of the same draw, padded by
    wrapping to equal lengths (as torch's DistributedSampler does)."""

    def __init__(self, labels: np.ndarray, *, mode: str, seed: int, rank: int = 0, world_size: int = 1):
        if mode not in SAMPLINGS:
            raise ValueError(f"sampling: expected one of {', '.join(SAMPLINGS)}, found {mode!r}")
        self.labels = np.asarray(labels)
        self.mode, self.seed, self.rank, self.world_size = mode, int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def indices(self) -> torch.Tensor:
        """The whole epoch's draw, before it is shared between ranks."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.labels)
        if self.mode == "balanced":
            weights = 1.0 / np.bincount(self.labels)[self.labels]
            return torch.multinomial(torch.as_tensor(weights, dtype=torch.double), n, replacement=True, generator=generator)
        return torch.randperm(n, generator=generator)

    def __iter__(self):
        draw = self.indices()
        total = len(self) * self.world_size
        if total > len(draw):
            draw = torch.cat([draw, draw[: total - len(draw)]])
        return iter(draw[self.rank : total : self.world_size].tolist())


StreamFactory = Callable[[int, int], IterableDataset]  # (epoch, rank) -> that epoch's stream for that rank


class LensDataModule(L.LightningDataModule):
    """`train` is a PackedDataset (sampled by EpochSampler with `sampling`), a StreamFactory, called once per
    epoch (the trainer reloads the training loader every epoch when streaming), so each epoch simulates new objects,
    or an epoch stream of batches with `for_epoch(epoch, rank, world)` (labelled cubes, `data.cubes.CubeEpochs`,
    also reloaded every epoch)."""

    def __init__(self, train: Dataset | StreamFactory, val: Dataset, *, batch_size: int, num_workers: int = 0,
                 sampling: str = "shuffle", seed: int = 0):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sampling, self.seed = sampling, seed

    @property
    def streaming(self) -> bool:
        return not isinstance(self.train_set, Dataset)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, sampler: Sampler | None, *, persistent: bool) -> DataLoader:
        # The loader's own generator seeds its workers, so nothing here draws from the global RNG (augmentation's).
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=persistent and self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if hasattr(self.train_set, "for_epoch"):  # batches read from cubes block by block (data/cubes.py)
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            return DataLoader(self.train_set.for_epoch(epoch, rank, world), batch_size=None,
                              num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        if self.streaming:
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            return self._loader(self.train_set(epoch, rank), None, persistent=False)
        sampler = EpochSampler(self.train_set.labels.numpy(), mode=self.sampling, seed=self.seed, rank=rank, world_size=world)
        return self._loader(self.train_set, sampler, persistent=True)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return self._loader(self.val_set, sampler, persistent=True)
