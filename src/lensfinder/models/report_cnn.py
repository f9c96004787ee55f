"""The CNNs of the DeepLense evaluation report (sections 2.2.2 and 3.2.2), layer for layer."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model


class ReportCNN(nn.Module):
    """[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2 -> Dropout(0.5)] x len(widths), then FC(512) -> Dropout -> FC."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], image_size: int = 64, dropout: float = 0.5):
        super().__init__()
        if image_size % (2 ** len(widths)):
            raise ValueError(f"image_size must be divisible by {2 ** len(widths)} for {len(widths)} pooling stages, got {image_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        # The classifier input follows the image size: 256*4*4 = 4096 (cnn4) and 128*8*8 = 8192 (cnn3) at 64x64.
        side = image_size // 2 ** len(widths)
        self.num_features = channels * side * side
        self.head = nn.Sequential(
            nn.Linear(self.num_features, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model("report-cnn4", "Report Task 1 CNN: 4 conv blocks (32-64-128-256), FC 512")
def report_cnn4(in_channels: int, num_classes: int, image_size: int = 64) -> ReportCNN:
    return ReportCNN(in_channels, num_classes, (32, 64, 128, 256), image_size)


@register_model("report-cnn3", "Report Task 2 CNN: 3 conv blocks (32-64-128), FC 512")
def report_cnn3(in_channels: int, num_classes: int, image_size: int = 64) -> ReportCNN:
    return ReportCNN(in_channels, num_classes, (32, 64, 128), image_size)
