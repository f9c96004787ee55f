"""Compiled (numba) CPU loops for the per-pixel work that torch and numpy can only do in many
passes: the Task-1 point-mass deflections (25 or 100 masses per image), PSF and DeepLense noise.

error_model="numpy": a float division by zero gives inf instead of raising, which lets LLVM
vectorise the point-mass loop (the Python error model adds a branch per division). No fastmath:
every operation is a correctly rounded IEEE operation, so results do not depend on vector width,
loop tails or the CPU's FMA support, and each image's result is independent of its batch.
numba is a run-time dependency of the simulator (compiled on first use, then cached on disk).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_PIXEL_CHUNK = 1024  # pixels per pass over the masses: the chunk's coordinates and sums stay in L1
_LOG_FACTORIAL = np.array([math.lgamma(k + 1.0) for k in range(2048)])  # PTRS test: a lookup, not lgamma
_TABLE_LAM = 64  # Poisson(lam < 64) by table inversion (PTRS, above, needs logs half the time)
_GUIDE = 64


def _poisson_tables(size: int = 176):
    """CDFs of Poisson(L), L = 0 .. _TABLE_LAM - 1, over k < size (tails beyond are below 1e-20),
    normalised so that they end at exactly 1 (sums of pmfs are 1 only to ~1e-14: a uniform above
    the last value would run off the table), and guide tables: guide[L, j] = smallest k with
    cdf[L, k] >= j / _GUIDE, where the search for a uniform in [j / _GUIDE, (j + 1) / _GUIDE) starts."""
    lam = np.arange(_TABLE_LAM, dtype=np.float64)[:, None]
    k = np.arange(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmf = np.exp(k * np.log(lam) - lam - _LOG_FACTORIAL[:size])
    pmf[0] = k == 0
    cdf = np.cumsum(pmf, axis=1)
    cdf /= cdf[:, -1:]
    guide = np.array([np.searchsorted(row, np.arange(_GUIDE) / _GUIDE) for row in cdf])
    return cdf, guide


_CDF, _CDF_GUIDE = _poisson_tables()


@numba.njit(cache=True, error_model="numpy")
def point_deflection(gx, gy, xk, yk, t2, soft2, ax, ay):
    """Add the deflection of K point masses per image to ax, ay (B, P): alpha = t2 (x - xk) /
    (r^2 + soft2) on the grid gx, gy (P,), masses xk, yk, t2 = theta_E^2 (B, K), summed mass by
    mass in order. soft2 is a scalar of the arrays' dtype (a float64 one would promote float32 sums)."""
    n_img, n_mass = xk.shape
    n_pix = gx.size
    for b in range(n_img):
        for p0 in range(0, n_pix, _PIXEL_CHUNK):
            p1 = min(n_pix, p0 + _PIXEL_CHUNK)
            x, y, sx, sy = gx[p0:p1], gy[p0:p1], ax[b, p0:p1], ay[b, p0:p1]
            for j in range(n_mass):
                x0, y0, m = xk[b, j], yk[b, j], t2[b, j]
                for i in range(p1 - p0):
                    dx = x[i] - x0
                    dy = y[i] - y0
                    f = m / (dx * dx + dy * dy + soft2)
                    sx[i] += f * dx
                    sy[i] += f * dy


@numba.njit(cache=True)
def convolve_nearest(flux, n, taps, out):
    """Separable PSF: out[b] (n, n) = taps (odd length) along x then along y applied to the first
    n * n values of flux[b] (an n x n image, row-major), edges replicated (scipy mode "nearest"),
    taps summed in order; rows are padded in small buffers that stay in cache."""
    r = taps.size // 2
    line = np.empty(n + 2 * r, flux.dtype)
    rows = np.empty((n + 2 * r, n), flux.dtype)  # x-filtered rows, edge rows repeated r times
    for b in range(flux.shape[0]):
        for y in range(n):
            src = flux[b, y * n:(y + 1) * n]
            line[:r] = src[0]
            line[r:r + n] = src
            line[r + n:] = src[n - 1]
            h = rows[y + r]
            for x in range(n):
                h[x] = line[x] * taps[0]
            for t in range(1, taps.size):
                for x in range(n):
                    h[x] += line[x + t] * taps[t]
        for t in range(r):
            rows[t] = rows[r]
            rows[r + n + t] = rows[r + n - 1]
        for y in range(n):
            o = out[b, y]
            for x in range(n):
                o[x] = rows[y, x] * taps[0]
            for t in range(1, taps.size):
                row = rows[y + t]
                for x in range(n):
                    o[x] += row[x] * taps[t]


@numba.njit(cache=True, error_model="numpy")
def _poisson(lam, rng):
    """One exact Poisson(lam) draw, lam > 0. Below _TABLE_LAM: Poisson(floor(lam)) by inversion of
    a tabulated CDF (one uniform, a guided search of one or two steps) plus Poisson(fraction)
    as the arrivals of a unit-rate process within the fraction (exponential gaps, ~1.5 draws),
    no logs or exps. Above: transformed rejection (PTRS, Hormann 1993, as numpy), whose full
    acceptance test runs only when the quick one fails, log-factorials from a table."""
    if lam < _TABLE_LAM:
        n = int(lam)
        u = rng.random()
        cdf = _CDF[n]
        k = _CDF_GUIDE[n, int(u * _GUIDE)]
        while u > cdf[k]:
            k += 1
        gap = rng.standard_exponential()
        while gap <= lam - n:
            k += 1
            gap += rng.standard_exponential()
        return k
    b = 0.931 + 2.53 * math.sqrt(lam)
    a = -0.059 + 0.02483 * b
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if (math.log(v * (1.1239 + 1.1328 / (b - 3.4)) / (a / (us * us) + b))
                <= -lam + k * math.log(lam) - (_LOG_FACTORIAL[k] if k < 2048 else math.lgamma(k + 1.0))):
            return k


@numba.njit(cache=True, error_model="numpy")
def deeplense_counts(image, exposure_s, background_rms, rng, out):
    """DeepLenseSim noise, pixel by pixel from one generator: out = Poisson(t max(0, image + n)),
    n ~ N(0, sqrt(|image| / t + rms^2)) (its Poisson-like and background Gaussians, summed)."""
    inv_t = 1.0 / exposure_s
    rms2 = background_rms * background_rms
    for i in range(image.size):
        m = image[i]
        lam = (rng.standard_normal() * math.sqrt(abs(m) * inv_t + rms2) + m) * exposure_s
        out[i] = _poisson(lam, rng) if lam > 0.0 else 0.0
