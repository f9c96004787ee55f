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
from .resnet import BasicBlock, fold_residual_batchnorm, residual_stages

# The pooled image is about this many pixels across: 150 -> 75 (k = 2), 64 -> 64 (k = 1).
POOLED_SIZE_PX = 75


def area_factor(image_size: int) -> int:
    """Block size of the area-average stem for an image of `image_size` pixels."""
    return max(1, round(image_size / POOLED_SIZE_PX))


class PooledResNet(nn.Module):
    """Area average k x k, a 3x3 stem, then residual stages (each after the first halves the image)."""

    def __init__(self, in_channels: int, num_classes: int, *, image_size: int, widths: tuple[int, ...],
                 blocks: tuple[int, ...], stem_width: int, stem_stride: int, dropout: float = 0.1):
        super().__init__()
        self.area_factor = area_factor(image_size)
        self.pool_in = nn.AvgPool2d(self.area_factor) if self.area_factor > 1 else nn.Identity()
        # Unpooled (k = 1) the stem is resnet-s's 5x5, so at 64 px this network is resnet-s, layer for layer.
        kernel = 5 if self.area_factor == 1 else 3
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, kernel, stem_stride, kernel // 2, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        self.stages, channels = residual_stages(BasicBlock, stem_width, widths, blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in self.stages:
            nn.init.zeros_(block.bn2.weight)  # each block starts as the identity

    def fold_batchnorm(self) -> "PooledResNet":
        """For inference only (eval mode): fold every batch norm into the convolution before it."""
        return fold_residual_batchnorm(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_in(x).contiguous(memory_format=torch.channels_last)
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model("resnet-pool-s", "resnet-s with an area-average stem: 150 px averaged to 75, then a 3x3 stem; at 64 px resnet-s")
def resnet_pool_s(in_channels: int, num_classes: int, image_size: int = 64) -> PooledResNet:
    return PooledResNet(in_channels, num_classes, image_size=image_size, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1),
                        stem_width=16, stem_stride=2)
