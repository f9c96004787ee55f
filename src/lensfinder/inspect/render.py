"""Cutouts to PNG: Lupton et al. (2004) asinh colour composites (i, r, g as red, green, blue), single bands in an
asinh stretch, and a residual-friendly symmetric stretch around the sky. Pure functions of arrays, plus a
small thread-safe cache of the PNG bytes the server sends."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

DEFAULT_Q = 8.0  # Lupton softening: larger shows more of the faint light next to the bright core
DEFAULT_STRETCH = 1.0  # multiplies the automatic linear range (0.1 = brighter, 10 = darker)
LINEAR_SIGMAS = 10.0  # the automatic linear range, in sky sigmas: the asinh stretch is linear below it
RESIDUAL_SIGMA = 25.0  # the residual stretch reaches full colour at this many sky sigmas ...
RESIDUAL_SOFTENING = 3.0  # ... and is linear below this many, so noise and faint arcs share one map
KINDS = ("composite", "band", "residual", "difference")


def read_image(files: list[Path]) -> np.ndarray:
    """A cutout as float32 (C, H, W): a .npy or FITS file, or one FITS file per band (`data.cutouts.read_cutout`); an
    unreadable or malformed cutout is an `InputError` naming the file."""
    from ..data.cutouts import read_cutout

    return read_cutout(files)


def warm_up() -> None:
    """Import the plotting modules now, so that the first page a grader opens is not the slow one."""
    import astropy.visualization  # noqa: F401
    import matplotlib.image  # noqa: F401
    from matplotlib import colormaps  # noqa: F401


def sky_and_noise(plane: np.ndarray) -> tuple[float, float]:
    """Sky level and noise sigma of one band from its outer frame of pixels (median and 1.4826 MAD): robust to
    the central objects a lens cutout is centred on."""
    width = max(2, min(plane.shape) // 10)
    frame = np.concatenate([plane[:width].ravel(), plane[-width:].ravel(), plane[:, :width].ravel(), plane[:, -width:].ravel()])
    sky = float(np.median(frame))
    sigma = 1.4826 * float(np.median(np.abs(frame - sky)))
    if not sigma > 0:
        sigma = float(np.std(plane)) or 1.0
    return sky, sigma


def _linear_range(planes: np.ndarray) -> float:
    """The automatic linear range of the asinh stretch for a sky-subtracted (C, H, W) stack: LINEAR_SIGMAS sky
    sigmas of the band mean, so the noise shows faintly and bright cores compress (asinh) instead of setting
    the scale."""
    mean = planes.mean(0)
    _, sigma = sky_and_noise(mean)
    return max(LINEAR_SIGMAS * sigma, 1e-6 * float(np.abs(mean).max()), 1e-30)


def composite(image: np.ndarray, *, stretch: float = DEFAULT_STRETCH, q: float = DEFAULT_Q) -> np.ndarray:
    """uint8 (H, W, 3). Three bands (g, r, i): the Lupton asinh composite of i, r, g as red, green, blue after
    subtracting each band's sky; one band (or any other count): the asinh grey image of the band mean."""
    from astropy.visualization import make_lupton_rgb

    image = np.asarray(image, dtype=np.float64)
    skies = np.array([sky_and_noise(plane)[0] for plane in image])
    planes = image - skies[:, None, None]
    if planes.shape[0] != 3:
        return np.repeat(band(planes.mean(0, keepdims=True)[0], stretch=stretch, q=q)[..., None], 3, axis=2)
    linear = _linear_range(planes) * stretch
    return make_lupton_rgb(planes[2], planes[1], planes[0], minimum=0, stretch=linear, Q=q)


def band(plane: np.ndarray, *, stretch: float = DEFAULT_STRETCH, q: float = DEFAULT_Q) -> np.ndarray:
    """uint8 (H, W): one band in the composite's asinh stretch, asinh(Q x / range) / Q of the sky-subtracted
    pixels x, from black at the sky to white."""
    plane = np.asarray(plane, dtype=np.float64)
    x = plane - sky_and_noise(plane)[0]
    linear = _linear_range(x[None]) * stretch
    scaled = np.arcsinh(q * x / linear) / q
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def residual(plane: np.ndarray, *, sigma_max: float = RESIDUAL_SIGMA) -> np.ndarray:
    """uint8 (H, W, 3): a symmetric stretch around the sky in units of the sky sigma, linear within a few sigma
    and asinh beyond, on a diverging map (blue below the sky, red above, white at the sky): faint arcs, negative
    residuals of a subtracted model and noise all stay visible."""
    from matplotlib import colormaps

    plane = np.asarray(plane, dtype=np.float64)
    sky, sigma = sky_and_noise(plane)
    x = (plane - sky) / sigma
    soft = RESIDUAL_SOFTENING
    scaled = np.sign(x) * np.arcsinh(np.abs(x) / soft) / np.arcsinh(sigma_max / soft)
    rgba = colormaps["RdBu_r"](0.5 + 0.5 * np.clip(scaled, -1, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


def colour_difference(image: np.ndarray) -> np.ndarray:
    """g - k i with k fitted on the central pixels (least squares): the red lens galaxy cancels and the blue
    arcs around it remain. For fewer than three bands, the first band."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[0] < 3:
        return image[0]
    g, i = (plane - sky_and_noise(plane)[0] for plane in (image[0], image[-1]))
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w]
    centre = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= max(2.0, min(h, w) / 16)
    denominator = float((i[centre] ** 2).sum())
    k = float((g[centre] * i[centre]).sum()) / denominator if denominator > 0 else 0.0
    return g - max(k, 0.0) * i


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array."""
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    if pixels.ndim == 2:
        imsave(buffer, pixels, format="png", cmap="gray", vmin=0, vmax=255)
    else:
        imsave(buffer, pixels, format="png")
    return buffer.getvalue()


def render(image: np.ndarray, kind: str, *, band_index: int = 0, stretch: float = DEFAULT_STRETCH,
           q: float = DEFAULT_Q) -> bytes:
    """PNG of one view of a (C, H, W) cutout: composite | band (band_index) | residual (of band_index) |
    difference (g - k i, residual stretch)."""
    if kind == "composite":
        return png(composite(image, stretch=stretch, q=q))
    if kind == "band":
        return png(band(image[band_index], stretch=stretch, q=q))
    if kind == "residual":
        return png(residual(image[band_index]))
    if kind == "difference":
        return png(residual(colour_difference(image)))
    raise ValueError(f"unknown view {kind!r}; expected one of {', '.join(KINDS)}")


class PNGCache:
    """Least-recently-used cache of rendered PNGs (and of the reasons a cutout could not be read), shared by the
    server's threads."""

    def __init__(self, max_items: int = 4096):
        self.max_items = max_items
        self._items: OrderedDict[tuple, bytes | str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes | str) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
