"""The dihedral group D4 (4 rotations x optional flip): lensing has no preferred orientation."""

from __future__ import annotations

import torch


def d4_transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element k in 0..7 of D4 applied to a batch (..., H, W): rotation by 90*(k % 4) degrees, flipped if k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random D4 element to every image of the batch."""
    ks = torch.randint(0, 8, (x.shape[0],), generator=generator, device="cpu")
    out = torch.empty_like(x)
    for k in range(8):
        chosen = (ks == k).nonzero(as_tuple=True)[0].to(x.device)
        if len(chosen):
            out[chosen] = d4_transform(x[chosen], k)
    return out
