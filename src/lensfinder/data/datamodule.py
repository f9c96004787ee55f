"""Datasets over packed arrays, and the Lightning DataModule that trains on them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from .cache import open_packed


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


def balanced_sampler(labels: np.ndarray, *, seed: int) -> WeightedRandomSampler:
    """Draws every class equally often, with replacement; an epoch is still len(labels) draws.

    Under DDP, Lightning wraps it so each rank draws its own share.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


class LensDataModule(L.LightningDataModule):
    def __init__(self, train: Dataset, val: Dataset, *, batch_size: int, num_workers: int = 0, shuffle_train: bool = True,
                 train_sampler: Sampler | None = None):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers, self.shuffle_train = batch_size, num_workers, shuffle_train
        self.train_sampler = train_sampler

    def _loader(self, dataset: Dataset, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.shuffle_train, self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
