"""Batched inference shared by evaluation and catalogue prediction: log-space class scores (float64, never
saturated), from which `metrics.log_odds` gives the ranking score and a softmax the probabilities."""

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
def predict_logits_loader(module: LensModule, loader, *, tta: bool | None = None, device: str = "auto",
                          progress: bool = False, calibrated: bool = True, prevalence: float | None = None) -> np.ndarray:
    """Float64 log-space class scores (N, K) (`LensModule.predict_logits`) for every batch of a loader yielding
    image tensors (or (images, extra) pairs). `calibrated=False` gives the mean log-probabilities over the views."""
    target = pick_device(device)
    module = module.for_inference().to(target)
    chunks = []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description="scoring cutouts", total=len(loader), transient=True)
    for batch in batches:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = module.predict_logits(images.to(target, non_blocking=True), tta=tta, calibrated=calibrated,
                                       prevalence=prevalence)
        chunks.append(logits.cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, module.hparams.num_classes), dtype=np.float64)


def predict_logits_array(module: LensModule, images: np.ndarray, *, batch_size: int = 256, tta: bool | None = None,
                         device: str = "auto", calibrated: bool = True, prevalence: float | None = None) -> np.ndarray:
    """`predict_logits_loader` over an (N, C, H, W) array (memory-mapped packs are read batch by batch)."""
    return predict_logits_loader(module, DataLoader(_ArrayDataset(images), batch_size=batch_size), tta=tta,
                                 device=device, calibrated=calibrated, prevalence=prevalence)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of log-space scores, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def predict_loader(module: LensModule, loader, *, tta: bool | None = None, device: str = "auto",
                   progress: bool = False, prevalence: float | None = None) -> np.ndarray:
    """Calibrated class probabilities (N, K), float64: the softmax of `predict_logits_loader`. Rank by
    `metrics.log_odds` of the logits instead: probabilities round to 1 at the top of a catalogue."""
    return softmax(predict_logits_loader(module, loader, tta=tta, device=device, progress=progress, prevalence=prevalence))


def predict_array(module: LensModule, images: np.ndarray, *, batch_size: int = 256, tta: bool | None = None,
                  device: str = "auto") -> np.ndarray:
    """Calibrated class probabilities (N, K) of an (N, C, H, W) array; see `predict_logits_array`."""
    return softmax(predict_logits_array(module, images, batch_size=batch_size, tta=tta, device=device))
