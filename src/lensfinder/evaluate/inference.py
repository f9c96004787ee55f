"""Batched inference shared by evaluation and catalogue prediction."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..train.module import LensModule


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _ArrayDataset(Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index], dtype=np.float32))


@torch.no_grad()
def predict_loader(module: LensModule, loader, *, tta: bool | None = None, device: str = "auto",
                   progress: bool = False, prevalence: float | None = None) -> np.ndarray:
    """Class probabilities (N, K) for every batch of a loader yielding image tensors (or (images, extra) pairs)."""
    target = pick_device(device)
    module = module.for_inference().to(target)
    chunks = []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description="scoring cutouts", total=len(loader), transient=True)
    for batch in batches:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        chunks.append(module.predict_proba(images.to(target, non_blocking=True), tta=tta, prevalence=prevalence).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, module.hparams.num_classes), dtype=np.float32)


def predict_array(module: LensModule, images: np.ndarray, *, batch_size: int = 256, tta: bool | None = None,
                  device: str = "auto") -> np.ndarray:
    return predict_loader(module, DataLoader(_ArrayDataset(images), batch_size=batch_size), tta=tta, device=device)
