"""Rotation- and reflection-equivariant CNNs for the dihedral group D4, in plain torch.

Lensing has no preferred orientation. A D4 group convolution shares one filter across the 8 symmetries
of the square pixel grid (4 rotations by 90 degrees, with and without a flip), so every feature map
carries a group axis of size 8 that permutes when the input is rotated or flipped; pooling over that
axis at the end gives features that are exactly invariant. Written without escnn (which needs numpy < 2).

Exactness on a pixel grid needs symmetric sampling: every convolution here is either odd-sized with
stride 1 and "same" padding, or 4x4 / 2x2 with stride 2 on an even image (the sampled windows mirror
onto each other about the image centre), so equivariance holds to rounding for even image sizes.

Group elements are indexed as in `lensfinder.data.transforms.d4_transform`: k in 0..7 is a rotation
by 90 * (k % 4) degrees followed by a horizontal flip when k >= 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data.transforms import d4_transform
from ._registry import register_model
from .resnet import fold_residual_batchnorm, residual_stages

GROUP_ORDER = 8


# The spatial action of element k on the last two axes: the one D4 transform of the package.
d4_act = d4_transform


def _cayley_table() -> tuple[list[list[int]], list[int]]:
    """mult[a][b] = c with act(act(x, b), a) == act(x, c), and inv[a]; found by acting on an asymmetric probe."""
    probe = torch.arange(9.0).view(3, 3)
    views = [d4_act(probe, k) for k in range(GROUP_ORDER)]
    mult = [[next(c for c in range(GROUP_ORDER) if torch.equal(d4_act(views[b], a), views[c])) for b in range(GROUP_ORDER)]
            for a in range(GROUP_ORDER)]
    inv = [next(b for b in range(GROUP_ORDER) if mult[a][b] == 0) for a in range(GROUP_ORDER)]
    return mult, inv


MULT, INV = _cayley_table()


class LiftConv(nn.Module):
    """Image (B, C_in, H, W) -> group features (B, C_out * 8, H', W'): one filter seen in all 8 orientations."""

    def __init__(self, in_channels: int, out_fields: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.out_fields, self.stride, self.padding = out_fields, stride, padding
        self.weight = nn.Parameter(torch.empty(out_fields, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def full_weight(self) -> torch.Tensor:
        # Output channel (o, g) sees the filter transformed by g; channels ordered field-major (o * 8 + g).
        stacked = torch.stack([d4_act(self.weight, g) for g in range(GROUP_ORDER)], dim=1)
        return stacked.flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.full_weight(), stride=self.stride, padding=self.padding)


class GroupConv(nn.Module):
    """Group features (B, C_in * 8, H, W) -> (B, C_out * 8, H', W'), equivariant under D4.

    out(o, g) = sum_{i, h} corr(f(i, h), g . W(o, i, g^-1 h)), where g . acts on the filter's pixels.
    """

    def __init__(self, in_fields: int, out_fields: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_fields, in_fields, GROUP_ORDER, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight.view(out_fields, in_fields * GROUP_ORDER, kernel_size, kernel_size),
                                mode="fan_out", nonlinearity="relu")
        # index[g][h] = g^-1 h: which slice of the group axis output orientation g reads for input orientation h.
        self.register_buffer("index", torch.tensor([[MULT[INV[g]][h] for h in range(GROUP_ORDER)] for g in range(GROUP_ORDER)]),
                             persistent=False)

    def full_weight(self) -> torch.Tensor:
        out_fields, in_fields = self.weight.shape[:2]
        per_g = [d4_act(self.weight[:, :, self.index[g]], g) for g in range(GROUP_ORDER)]  # each (O, I, 8, k, k)
        stacked = torch.stack(per_g, dim=1)  # (O, 8_out, I, 8_in, k, k)
        return stacked.reshape(out_fields * GROUP_ORDER, in_fields * GROUP_ORDER, *self.weight.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.full_weight(), stride=self.stride, padding=self.padding)


class GroupBatchNorm(nn.Module):
    """Batch norm with one mean/variance/affine per field, shared across its 8 orientations (keeps equivariance)."""

    def __init__(self, fields: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.bn(x.view(b, c // GROUP_ORDER, GROUP_ORDER, h, w)).view(b, c, h, w)


def plain_conv(conv: LiftConv | GroupConv, norm: GroupBatchNorm) -> nn.Conv2d:
    """The group convolution as the ordinary convolution it expands to, with its batch norm folded in (eval mode):
    inference then skips rebuilding the 8 filter orientations on every call. Same outputs to float rounding."""
    weight = conv.full_weight().detach()
    plain = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], stride=conv.stride, padding=conv.padding,
                      bias=False).to(weight)
    plain.weight.data.copy_(weight)
    # One statistic per field, shared by its 8 orientation channels (field-major order, o * 8 + g).
    expanded = nn.BatchNorm2d(weight.shape[0], eps=norm.bn.eps).to(weight)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(expanded, name).data.copy_(getattr(norm.bn, name).repeat_interleave(GROUP_ORDER))
    return fuse_conv_bn_eval(plain.eval(), expanded.eval())


class GroupBlock(nn.Module):
    """Residual block of two 3x3 group convolutions; downsampling by a 4x4 stride-2 group convolution."""

    def __init__(self, in_fields: int, out_fields: int, stride: int):
        super().__init__()
        k, pad = (4, 1) if stride == 2 else (3, 1)
        self.conv1 = GroupConv(in_fields, out_fields, k, stride, pad)
        self.bn1 = GroupBatchNorm(out_fields)
        self.conv2 = GroupConv(out_fields, out_fields, 3, 1, 1)
        self.bn2 = GroupBatchNorm(out_fields)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_fields != out_fields:
            self.shortcut = nn.Sequential(GroupConv(in_fields, out_fields, 2 if stride == 2 else 1, stride),
                                          GroupBatchNorm(out_fields))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class D4ResNet(nn.Module):
    """Lifting stem (4x4, stride 2) -> residual group-conv stages -> pooling over space and orientation -> head.

    The features are exactly invariant to the 8 D4 symmetries of the input (for even image sizes), so
    test-time averaging over D4 adds nothing to this model.
    """

    def __init__(self, in_channels: int, num_classes: int, fields: tuple[int, ...], blocks: tuple[int, ...],
                 stem_fields: int, dropout: float = 0.1):
        super().__init__()
        self.stem = nn.Sequential(LiftConv(in_channels, stem_fields, 4, stride=2, padding=1), GroupBatchNorm(stem_fields),
                                  nn.ReLU(inplace=True))
        self.stages, channels = residual_stages(GroupBlock, stem_fields, fields, blocks)
        self.num_features = channels
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        for block in self.stages:
            nn.init.zeros_(block.bn2.bn.weight)  # each block starts as the identity

    def fold_batchnorm(self) -> "D4ResNet":
        """For inference only (in eval mode): every group convolution becomes the plain convolution it expands
        to, with its batch norm folded in."""
        return fold_residual_batchnorm(self, fuse=plain_conv)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"D4 models need even image sides for exact equivariance, got {tuple(x.shape[-2:])}")
        f = self.stages(self.stem(x))
        b, c, h, w = f.shape
        # Mean over space, max over the 8 orientations: invariant, and keeps the strongest orientation's response.
        return f.view(b, c // GROUP_ORDER, GROUP_ORDER, h * w).mean(-1).amax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model("d4-resnet-s", "D4-equivariant small ResNet: group convolutions, 4-8-16-32 fields x 8 orientations, invariant features")
def d4_resnet_s(in_channels: int, num_classes: int, image_size: int = 64) -> D4ResNet:
    return D4ResNet(in_channels, num_classes, fields=(4, 8, 16, 32), blocks=(1, 1, 1, 1), stem_fields=4)
