"""Residual networks for large, noisy, oversampled cutouts (150 x 150 DeepLense sets): area-average first.

The 150 x 150 DeepLense images sample a PSF of FWHM ~1.7 pixels and carry per-pixel noise. Averaging
k x k pixel blocks before any convolution (`area_factor` k) is an exact anti-aliasing filter for that
downsampling, lifts the per-pixel signal-to-noise by k, and cuts the compute of everything after it by
k^2; the strided 5x5 stem of `resnet-s` instead aliases the noise and spends most of its time at full
resolution. The factor follows the image size (k = max(1, round(image_size / 75))), so a 64 x 64 input
is not pooled and the same name works at every DeepLense resolution: unpooled, it is `resnet-s` exactly (same
layers, parameter names and initialisation), so it is the substructure default at every size.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model
from .resnet import ResNet

# The pooled image is about this many pixels across: 150 -> 75 (k = 2), 64 -> 64 (k = 1).
POOLED_SIZE_PX = 75


def area_factor(image_size: int) -> int:
    """Block size of the area-average stem for an image of `image_size` pixels."""
    return max(1, round(image_size / POOLED_SIZE_PX))


class PooledResNet(ResNet):
    """Area average k x k, then `ResNet` with a 3x3 stem (5x5 unpooled, so that k = 1 is `resnet-s` exactly)."""

    def __init__(self, in_channels: int, num_classes: int, *, image_size: int, widths: tuple[int, ...],
                 blocks: tuple[int, ...], stem_width: int, stem_stride: int, dropout: float = 0.1):
        k = area_factor(image_size)
        super().__init__(in_channels, num_classes, widths, blocks, stem_width, dropout,
                         stem_kernel=5 if k == 1 else 3, stem_stride=stem_stride)
        self.area_factor = k
        self.pool_in = nn.AvgPool2d(k) if k > 1 else nn.Identity()  # no parameters: initialisation unchanged

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(self.pool_in(x))


@register_model("resnet-pool-s", "resnet-s with an area-average stem: 150 px averaged to 75, then a 3x3 stem; at 64 px resnet-s")
def resnet_pool_s(in_channels: int, num_classes: int, image_size: int = 64) -> PooledResNet:
    return PooledResNet(in_channels, num_classes, image_size=image_size, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1),
                        stem_width=16, stem_stride=2)
