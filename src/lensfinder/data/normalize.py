"""Input normalisation, applied to whole batches on the model's device.

- `channel`: (x - mean_c) / std_c with statistics of the training split only (the report's choice).
- `minmax`:  per image, (x - min) / (max - min).
- `asinh`:   per image and band, asinh(x / (softening * sigma)) / 3, where sigma is the image's robust
             (MAD) noise level, so faint arcs and bright cores share the dynamic range; band ratios
             survive because every band is scaled by its own noise, not its peak. sigma is at least
             `peak_floor` times the band's peak, so that noise-free simulations (MAD ~ 0) work; on
             observed data the floor must stay far below the noise (a bright star would otherwise
             set sigma and flatten faint arcs), hence 1e-6 for lens finding.
- `log`:     like asinh but sign(x) log1p(|x| / (softening * sigma)) / 3.
- `none`:    raw pixels.
The normaliser's state (kind, channel statistics, softening, peak floor) travels in checkpoints and shipped weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..validation import InputError

KINDS = ("channel", "minmax", "asinh", "log", "none")
NOISE_FREE_PEAK_FLOOR = 1e-3  # asinh / log default, and what states saved before the setting used


def channel_stats(images: np.ndarray, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of an (N, C, H, W) array, in float64, streamed in chunks (memory-mapped input)."""
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    count = 0
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block**2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _robust_sigma(x: torch.Tensor, peak_floor: float) -> torch.Tensor:
    """Per image and band noise level from the median absolute deviation, at least peak_floor x the peak."""
    flat = x.flatten(2)
    median = flat.median(dim=2, keepdim=True).values
    mad = (flat - median).abs().median(dim=2, keepdim=True).values * 1.4826
    peak = flat.abs().amax(dim=2, keepdim=True)
    sigma = torch.maximum(mad, peak_floor * peak)
    return torch.clamp(sigma, min=1e-12).unsqueeze(-1)


class Normalizer(nn.Module):
    def __init__(self, kind: str = "channel", mean: list[float] | None = None, std: list[float] | None = None, softening: float = 1.0,
                 peak_floor: float = NOISE_FREE_PEAK_FLOOR):
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"unknown normalisation {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "channel" and (mean is None or std is None):
            raise InputError("channel normalisation needs the training split's mean and std (a model file without them is damaged: retrain or re-export it)")
        if not 0.0 <= peak_floor < 1.0:
            raise InputError(f"peak_floor: expected a number in [0, 1), found {peak_floor!r}")
        self.kind = kind
        self.softening = float(softening)
        self.peak_floor = float(peak_floor)
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1))

    def state(self) -> dict:
        """Plain-data description, enough to rebuild this normaliser."""
        return {
            "kind": self.kind,
            "mean": self.mean.flatten().tolist() if self.kind == "channel" else None,
            "std": self.std.flatten().tolist() if self.kind == "channel" else None,
            "softening": self.softening,
            "peak_floor": self.peak_floor,
        }

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        return cls(state["kind"], state.get("mean"), state.get("std"), state.get("softening", 1.0),
                   state.get("peak_floor", NOISE_FREE_PEAK_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "channel":
            return (x - self.mean) / self.std
        if self.kind == "minmax":
            lo = x.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
            hi = x.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
            return (x - lo) / torch.clamp(hi - lo, min=1e-12)
        if self.kind in ("asinh", "log"):
            scaled = x / (self.softening * _robust_sigma(x, self.peak_floor))
            stretched = torch.asinh(scaled) if self.kind == "asinh" else torch.sign(scaled) * torch.log1p(scaled.abs())
            return stretched / 3.0
        return x
