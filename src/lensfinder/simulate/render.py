"""Batched rendering on caustics' functional layer: tensors in, tensors out, no state.

Shapes: per-object parameters are (B,) or (B, K) tensors; the coordinate grid is (H, W); images
are (B, C, H, W). Parameters are in caustics conventions (see ``conventions.py``) except that
orientations arrive as (cos phi, sin phi), computed per object in float64 by the caller.

Bit-reproducibility whatever the batch size (float32 on CPU): torch's CPU kernels evaluate
transcendental functions (exp, atan, pow, ...) with vectorised code except in the tail of a
loop, and the two can differ in the last bit. So (1) transcendental functions only ever run on
grid-sized tensors whose per-image size is a multiple of 1024 elements (the engine pads the grid
to multiples of 32 per side and crops afterwards), never on (B,)-sized parameter tensors, which
is why rotations are applied here with precomputed cos/sin and caustics gets phi=None; and
(2) sums over slots, point masses and PSF taps are explicit loops of exact additions in a
fixed order (no BLAS, no oneDNN convolution whose algorithm depends on the batch size).

caustics provides the SIE and shear deflections; point masses en masse (25 or 100 per image) run
in the compiled kernels of ``kernels.py``, and the PSF is a separable convolution in plain torch
reproducing ``scipy.ndimage.gaussian_filter`` (what lenstronomy uses). ``point_images`` solves the
lens equation for a point source (lensed quasars).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from caustics.lenses.func import (
    reduced_deflection_angle_external_shear,
    reduced_deflection_angle_sie,
)

# Softening (arcsec) of the SIE and point masses; lenstronomy's SIE uses 1e-10. It only matters
# when a pixel centre falls exactly on a mass.
SOFTENING_ARCSEC = 1e-10


def _col(t):
    """(B,) -> (B, 1, 1); (B, K) -> (B, K, 1, 1): broadcast against an (H, W) grid."""
    return t[..., None, None] if isinstance(t, torch.Tensor) else t


def rotate(x, y, *, x0, y0, cos_phi, sin_phi):
    """Coordinates relative to (x0, y0) in the frame rotated by phi (caustics' translate_rotate)."""
    dx, dy = x - _col(x0), y - _col(y0)
    c, s = _col(cos_phi), _col(sin_phi)
    return dx * c + dy * s, dy * c - dx * s


def deflection_sie_shear(x, y, *, x0, y0, q, cos_phi, sin_phi, rein, gamma1, gamma2):
    """Deflection (B, H, W) of an SIE (caustics Rein = lenstronomy theta_E) plus external shear
    centred on it."""
    xr, yr = rotate(x, y, x0=x0, y0=y0, cos_phi=cos_phi, sin_phi=sin_phi)
    axr, ayr = reduced_deflection_angle_sie(0.0, 0.0, _col(q), None, _col(rein), xr, yr, s=SOFTENING_ARCSEC)
    c, s = _col(cos_phi), _col(sin_phi)
    ax, ay = axr * c - ayr * s, axr * s + ayr * c
    sx, sy = reduced_deflection_angle_external_shear(_col(x0), _col(y0), _col(gamma1), _col(gamma2), x, y)
    return ax + sx, ay + sy


def ring_profiles(x, y, *, x0, y0, q, cos_phi, sin_phi, radius, width, cos_arc, sin_arc, arc_half_width):
    """Unit-amplitude elliptical Gaussian rings / arcs, (B, K, H, W).

    I = exp(-(r - radius)^2 / (2 width^2) - dang^2 / (2 arc_half_width^2)), r the geometric-mean
    elliptical radius, dang the position angle from the arc's centre direction (cos_arc, sin_arc);
    a full ring has arc_half_width = inf. Ring galaxies and tidal arcs (lens-finding confusers).
    """
    xr, yr = rotate(x, y, x0=x0, y0=y0, cos_phi=cos_phi, sin_phi=sin_phi)
    qq = _col(q)
    r = torch.sqrt(qq * xr**2 + yr**2 / qq)
    dx, dy = x - _col(x0), y - _col(y0)
    ca, sa = _col(cos_arc), _col(sin_arc)
    dang = torch.atan2(dy * ca - dx * sa, dx * ca + dy * sa)
    # exponent floored at -60: no subnormal floats (slow) in the tails
    return torch.exp((-0.5 * ((r - _col(radius)) / _col(width)) ** 2
                      - 0.5 * (dang / _col(arc_half_width)) ** 2).clamp_(min=-60.0))


def combine_bands(profiles: torch.Tensor, amps: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) unit profiles x (B, K, C) amplitudes -> (B, C, H, W), summed in slot order."""
    out = profiles[:, 0, None] * amps[:, 0, :, None, None]
    for j in range(1, profiles.shape[1]):
        out = out + profiles[:, j, None] * amps[:, j, :, None, None]
    return out


def downsample_sum(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum flux over factor x factor sub-pixels: (..., H*f, W*f) -> (..., H, W)."""
    if factor == 1:
        return image
    out = image[..., 0::factor, 0::factor]
    for i in range(factor):
        for j in range(factor):
            if i or j:
                out = out + image[..., i::factor, j::factor]
    return out


def convolve_separable(image: torch.Tensor, kernels_1d: torch.Tensor) -> torch.Tensor:
    """Per-channel separable convolution with edge replication (scipy mode "nearest").

    ``kernels_1d`` is (C, K), K odd (narrower kernels zero-padded, which changes nothing).
    Symmetric kernels, so correlation = convolution.
    """
    size = kernels_1d.shape[1]
    radius = size // 2
    if radius == 0:
        return image * kernels_1d[:, 0, None, None]
    h, w = image.shape[-2:]
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    kern = kernels_1d[:, :, None, None]
    rows = torch.mul(padded[..., :, 0:w], kern[:, 0])
    for t in range(1, size):  # in place: one pass per tap, no temporaries
        rows.addcmul_(padded[..., :, t:t + w], kern[:, t])
    out = torch.mul(rows[..., 0:h, :], kern[:, 0])
    for t in range(1, size):
        out.addcmul_(rows[..., t:t + h, :], kern[:, t])
    return out


def point_images(*, beta_x: float, beta_y: float, x0: float, y0: float, q: float, phi: float, theta_e: float,
                 gamma1: float, gamma2: float, step_arcsec: float = 0.04, max_abs_magnification: float = 1e3):
    """Image positions (arcsec) and signed magnifications of a point source at (beta_x, beta_y) behind an
    SIE + external shear (lenstronomy conventions): the local minima of |beta(x) - beta| on a grid of
    `step_arcsec` around the lens, refined by Newton's method with a finite-difference Jacobian, in float64.
    Returns (x, y, mu) numpy arrays, brightest first (2 or 4 images for the usual configurations; the
    SIE's central image is infinitely demagnified and never returned)."""
    dt = torch.float64
    rein = float(theta_e)
    params = dict(x0=torch.tensor([x0], dtype=dt), y0=torch.tensor([y0], dtype=dt), q=torch.tensor([q], dtype=dt),
                  cos_phi=torch.tensor([math.cos(phi)], dtype=dt), sin_phi=torch.tensor([math.sin(phi)], dtype=dt),
                  rein=torch.tensor([rein], dtype=dt), gamma1=torch.tensor([gamma1], dtype=dt),
                  gamma2=torch.tensor([gamma2], dtype=dt))

    def source_plane(x: torch.Tensor, y: torch.Tensor):
        ax, ay = deflection_sie_shear(x, y, **params)  # x, y: (H, W) -> (1, H, W)
        return x - ax[0], y - ay[0]

    box = 2.0 * rein + abs(beta_x - x0) + abs(beta_y - y0)
    axis = torch.arange(-box, box + step_arcsec, step_arcsec, dtype=dt)
    gy, gx = torch.meshgrid(axis + y0, axis + x0, indexing="ij")
    bx, by = source_plane(gx, gy)
    d = torch.hypot(bx - beta_x, by - beta_y)
    pad = F.pad(d[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    neighbours = torch.stack([pad[1 + i:pad.shape[0] - 1 + i, 1 + j:pad.shape[1] - 1 + j]
                              for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j])
    candidates = torch.nonzero((d < neighbours.min(0).values) & (d < 4 * step_arcsec * max(1.0, rein)))
    h = 1e-6

    def jacobian(x, y):
        fx, fy = source_plane(x, y)
        fxx, fyx = source_plane(x + h, y)
        fxy, fyy = source_plane(x, y + h)
        return fx, fy, (fxx - fx) / h, (fxy - fx) / h, (fyx - fy) / h, (fyy - fy) / h

    x = gx[candidates[:, 0], candidates[:, 1]][None].clone()  # (1, K): every candidate at once
    y = gy[candidates[:, 0], candidates[:, 1]][None].clone()
    for _ in range(20):
        fx, fy, a, b, c, e = jacobian(x, y)
        rx, ry = fx - beta_x, fy - beta_y
        if x.numel() == 0 or torch.hypot(rx, ry).max() < 1e-10:
            break
        det = a * e - b * c
        safe = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (e * rx - b * ry) / safe
        y = y - (a * ry - c * rx) / safe
    fx, fy, a, b, c, e = jacobian(x, y)  # magnification where the images are
    det = a * e - b * c
    residual = torch.hypot(fx - beta_x, fy - beta_y)[0]
    xs, ys, mus = [], [], []
    for k in range(x.shape[1]):
        xk, yk, dk = x[0, k].item(), y[0, k].item(), det[0, k].item()
        if residual[k].item() > 1e-7 or abs(dk) < 1.0 / max_abs_magnification:
            continue
        if any(math.hypot(xk - u, yk - v) < 1e-4 for u, v in zip(xs, ys)):
            continue
        xs.append(xk)
        ys.append(yk)
        mus.append(1.0 / dk)
    order = sorted(range(len(xs)), key=lambda k: -abs(mus[k]))
    return (np.array([xs[k] for k in order]), np.array([ys[k] for k in order]), np.array([mus[k] for k in order]))
