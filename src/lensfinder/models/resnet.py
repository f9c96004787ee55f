"""Small residual networks sized for 64 x 64 (and 150 x 150) lensing cutouts.

A strided stem halves the image once, then one residual stage per width, each halving again; global
average pooling makes the head independent of the image size. Sized so that a 2-core CPU scores
thousands of 3 x 64 x 64 cutouts per second.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


def fold_residual_batchnorm(model: nn.Module, fuse: Callable[[nn.Module, nn.Module], nn.Module] = fuse_conv_bn_eval):
    """Fold every batch norm of a residual network (a `stem` of conv, norm, activation, then `stages` of blocks
    with conv1/bn1, conv2/bn2 and a conv+norm or identity shortcut) into the convolution before it, with `fuse`.
    For inference only (in eval mode): the folded model cannot be trained further."""
    if model.training:
        raise RuntimeError("fold_batchnorm needs eval mode: folding uses the running statistics")
    model.stem = nn.Sequential(fuse(model.stem[0], model.stem[1]), model.stem[2])
    for block in model.stages:
        block.conv1, block.bn1 = fuse(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = fuse(block.conv2, block.bn2), nn.Identity()
        if isinstance(block.shortcut, nn.Sequential):
            block.shortcut = fuse(*block.shortcut)
    return model


def residual_stages(block: Callable[[int, int, int], nn.Module], in_width: int, widths: tuple[int, ...],
                    blocks: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """`blocks[i]` blocks of width `widths[i]` per stage; every stage after the first starts by halving the image."""
    stages, width = [], in_width
    for i, (out_width, depth) in enumerate(zip(widths, blocks)):
        for j in range(depth):
            stages.append(block(width, out_width, 2 if (j == 0 and i > 0) else 1))
            width = out_width
    return nn.Sequential(*stages), width


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], blocks: tuple[int, ...],
                 stem_width: int, dropout: float = 0.1, *, stem_kernel: int = 5, stem_stride: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, stem_kernel, stem_stride, stem_kernel // 2, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        self.stages, channels = residual_stages(BasicBlock, stem_width, widths, blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in self.stages:
            nn.init.zeros_(block.bn2.weight)  # each block starts as the identity: steadier early training

    def fold_batchnorm(self) -> "ResNet":
        """For inference only (in eval mode): fold every batch norm into the convolution before it, which
        scores about 20 % more cutouts/s on CPU with the same outputs to float rounding."""
        return fold_residual_batchnorm(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last runs these small convolutions markedly faster on CPU (oneDNN); results are unchanged.
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model("resnet-s", "Small ResNet: stem/2, widths 16-32-64-128, one block each (~0.31 M parameters)")
def resnet_s(in_channels: int, num_classes: int, image_size: int = 64) -> ResNet:
    return ResNet(in_channels, num_classes, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_width=16)


@register_model("resnet-m", "Medium ResNet: stem/2, widths 24-48-96-192, two blocks each (~1.6 M parameters)")
def resnet_m(in_channels: int, num_classes: int, image_size: int = 64) -> ResNet:
    return ResNet(in_channels, num_classes, widths=(24, 48, 96, 192), blocks=(2, 2, 2, 2), stem_width=24)
