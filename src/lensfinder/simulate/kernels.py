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
_TABLE_STEPS = 8  # tabulated lam per unit: a residual d below 1/8 is 0 without an exp 94% of the time
_GUIDE = 256  # guide bins per CDF: the search from the guided start takes no step most of the time


def _poisson_tables(size: int = 176):
    """CDFs of Poisson(L), L = 0, 1/_TABLE_STEPS, .. < _TABLE_LAM, over k < size (tails beyond are
    below 1e-20), normalised so that they end at exactly 1 (sums of pmfs are 1 only to ~1e-14: a
    uniform above the last value would run off the table), and guide tables: guide[L, j] = smallest
    k with cdf[L, k] >= j / _GUIDE, where the search for a uniform in [j / _GUIDE, (j + 1) / _GUIDE)
    starts. 1 MB in all: one core's L2 cache."""
    lam = (np.arange(_TABLE_LAM * _TABLE_STEPS, dtype=np.float64) / _TABLE_STEPS)[:, None]
    k = np.arange(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmf = np.exp(k * np.log(lam) - lam - _LOG_FACTORIAL[:size])
    pmf[0] = k == 0
    cdf = np.cumsum(pmf, axis=1)
    cdf /= cdf[:, -1:]
    guide = np.array([np.searchsorted(row, np.arange(_GUIDE) / _GUIDE) for row in cdf]).astype(np.int16)
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


# ----------------------------------------------------------------------------- random numbers
# numba's Generator draws go through a function pointer per number; for DeepLense noise (a normal
# and, for half the pixels, a Poisson per pixel) that call cost more than the sampling. So the noise
# kernel carries its own xoshiro256++ state (Blackman & Vigna 2021), seeded per image from the
# image's numpy Generator, and draws normals by the 256-layer ziggurat (Marsaglia & Tsang 2000).
_U64_MASK52 = np.uint64((1 << 52) - 1)


def _ziggurat_tables(layers: int = 256, r: float = 3.6541528853610088, area: float = 0.00492867323399):
    """Marsaglia & Tsang's zigset for f(x) = exp(-x^2 / 2) on 52-bit integers: layer i < 256 has
    width x_i (x_255 = r, layer 0 the base strip plus tail); k[i] = x_(i-1) / x_i * 2^52 is the
    quick-accept bound, w[i] = x_i / 2^52 the scale, f[i] = f(x_i)."""
    scale = 2.0 ** 52
    k, w, f = np.zeros(layers, np.uint64), np.zeros(layers), np.zeros(layers)
    x = r
    q = area / math.exp(-0.5 * x * x)
    k[0], w[0], w[-1] = np.uint64(x / q * scale), q / scale, x / scale
    f[0], f[-1] = 1.0, math.exp(-0.5 * x * x)
    for i in range(layers - 2, 0, -1):
        inner = math.sqrt(-2.0 * math.log(area / x + math.exp(-0.5 * x * x)))
        k[i + 1] = np.uint64(inner / x * scale)
        x = inner
        f[i], w[i] = math.exp(-0.5 * x * x), x / scale
    return k, w, f, r


_ZIG_K, _ZIG_W, _ZIG_F, _ZIG_R = _ziggurat_tables()


def seed_state(rng: np.random.Generator) -> np.ndarray:
    """A xoshiro256++ state (4 non-zero uint64) drawn from a numpy Generator."""
    return rng.integers(1, np.iinfo(np.uint64).max, size=4, dtype=np.uint64, endpoint=True)


@numba.njit(inline="always")
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@numba.njit(inline="always")
def _next_u64(s):
    result = _rotl(s[0] + s[3], 23) + s[0]
    t = s[1] << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@numba.njit(inline="always")
def _uniform(s):
    """[0, 1), 53 random bits."""
    return (_next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(error_model="numpy", inline="always")
def _normal(s):
    """Standard normal by the ziggurat: one 64-bit draw (8 bits layer, 1 sign, 52 position), accepted
    at once 99% of the time; wedges and the tail (beyond r, Marsaglia's exponential method) exactly."""
    while True:
        bits = _next_u64(s)
        i = np.intp(bits & np.uint64(0xFF))
        negative = (bits >> np.uint64(8)) & np.uint64(1)
        position = (bits >> np.uint64(9)) & _U64_MASK52
        x = position * _ZIG_W[i]
        if position < _ZIG_K[i]:
            return -x if negative else x
        if i == 0:
            while True:
                xx = -math.log(1.0 - _uniform(s)) / _ZIG_R
                yy = -math.log(1.0 - _uniform(s))
                if yy + yy > xx * xx:
                    return -(_ZIG_R + xx) if negative else _ZIG_R + xx
        elif _ZIG_F[i] + _uniform(s) * (_ZIG_F[i - 1] - _ZIG_F[i]) < math.exp(-0.5 * x * x):
            return -x if negative else x


@numba.njit(cache=True, error_model="numpy")
def _poisson(lam, s):
    """One exact Poisson(lam) draw, lam > 0, from the xoshiro state s. Below _TABLE_LAM: Poisson(L),
    L = lam rounded down to the table's grid, by inversion of its tabulated CDF (one uniform, a
    guided search), plus Poisson(d), d = lam - L < 1 / _TABLE_STEPS, by inversion of its own CDF:
    a uniform below 1 - d <= exp(-d) means 0 (88% of draws, no exp). Above: transformed rejection
    (PTRS, Hormann 1993, as numpy), whose full acceptance test runs only when the quick one fails,
    log-factorials from a table."""
    if lam < _TABLE_LAM:
        row = int(lam * _TABLE_STEPS)
        u = _uniform(s)
        cdf = _CDF[row]
        k = np.intp(_CDF_GUIDE[row, int(u * _GUIDE)])
        while u > cdf[k]:
            k += 1
        d = lam - row / _TABLE_STEPS
        u = _uniform(s)
        if u < 1.0 - d:
            return k
        term = math.exp(-d)
        total, j = term, 0
        while u >= total:
            j += 1
            term *= d / j
            total += term
        return k + j
    b = 0.931 + 2.53 * math.sqrt(lam)
    a = -0.059 + 0.02483 * b
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _uniform(s) - 0.5
        v = _uniform(s)
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
def deeplense_counts(image, exposure_s, background_rms, state, out):
    """DeepLenseSim noise from one xoshiro state (seed_state): out = Poisson(t max(0, image + n)),
    n ~ N(0, sqrt(|image| / t + rms^2)) (its Poisson-like and background Gaussians, summed). Two
    passes, normals then Poisson draws: the branchy Poisson loop alone runs faster."""
    inv_t = 1.0 / exposure_s
    rms2 = background_rms * background_rms
    for i in range(image.size):
        m = image[i]
        out[i] = (_normal(state) * math.sqrt(abs(m) * inv_t + rms2) + m) * exposure_s
    for i in range(out.size):
        lam = out[i]
        out[i] = _poisson(lam, state) if lam > 0.0 else 0.0
