"""A PSF image per band from the stars in the user's cutouts (`lensfinder psf CUTOUTS --out psf/`).

Point sources are the most compact things in a survey's images, so the PSF is read off them:

1. every cutout's sky level and noise per band from its own pixels (``simulate.paint.sky_background``);
2. candidates: local maxima of the bands' summed significance above `min_snr` (per pixel), at least 5 sigma in
   every band (a cosmic ray or a hot pixel is in one band only), whose stamp lies inside the cutout;
3. unsaturated: no stamp pixel at or above `saturation` (when given), and no flat top (three or more pixels of the
   3 x 3 around the peak within 1e-4 of it in some band, what clipping at a saturation level leaves);
4. isolated: outside the candidate's core (5 sigma of its own size) the stamp has no source brighter than
   `isolation` times its peak (nor than 5 sigma, when that is more);
5. compact: the size (Gaussian-weighted second moments, adaptively) within `compact_tolerance` of the stellar
   locus, the median size of the most compact tenth of the candidates (at least 5), and above half of it
   (sharper than the PSF is an artefact);
6. the `max_stars` of highest S/N are recentred on their light centroid with a sub-pixel cubic-spline shift,
   cut to `size` x `size`, each normalised to sum 1 per band, and stacked by the per-pixel median (a neighbour in
   one stamp does not enter the PSF); the stack is normalised to sum 1.

The stack is the PSF of the stars' seeing, averaged over the cutouts: where the seeing varies across the survey,
make one PSF per region (or per observing night) and paint each region's hosts with its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..data.layouts import atomic_path, write_text_atomic
from ..simulate.paint import sky_background
from ..validation import InputError

FLAT_TOP_TOLERANCE = 1e-4  # a saturated peak: three or more pixels this close to the maximum
CORE_SIGMAS = 5.0  # a star's own light: within this many of its sigmas (isolation is judged outside)
SKY_CLIP_SIGMA, SKY_CLIP_ITERS = 3.0, 5  # as the painting's sky estimate (presets/_lensfinding.yaml paint)


@dataclass
class PsfResult:
    """What `build_psf` wrote: the PSF files (band order), the stars stacked and the measured FWHM (pixels)."""

    files: list[Path]
    stars: list[dict] = field(default_factory=list)
    candidates: int = 0
    fwhm_pix: list[float] = field(default_factory=list)


def adaptive_sigma_pix(stamp: np.ndarray, *, x0: float, y0: float, iterations: int = 5) -> tuple[float, float, float]:
    """(sigma in pixels, x, y) of the light in `stamp` (H, W) around (x0, y0) (pixels): second moments and centroid
    under a Gaussian weight matched to the source (adaptive moments; a Gaussian of sigma s gives s)."""
    h, w = stamp.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s_w, x, y = 2.0, float(x0), float(y0)
    for _ in range(iterations):
        weight = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s_w**2) * stamp
        total = weight.sum()
        if not total > 0:
            return math.nan, x, y
        x, y = (weight * xx).sum() / total, (weight * yy).sum() / total
        m2 = (weight * ((xx - x) ** 2 + (yy - y) ** 2)).sum() / (2.0 * total)  # per axis
        if not m2 > 0:
            return math.nan, x, y
        s_w = math.sqrt(2.0 * m2)  # a Gaussian of sigma s under a weight of sigma s has m2 = s^2 / 2
    return s_w, x, y


def _flat_top(plane: np.ndarray, j: int, i: int) -> bool:
    core = plane[max(j - 1, 0):j + 2, max(i - 1, 0):i + 2]
    peak = core.max()
    return peak > 0 and int((core >= peak * (1.0 - FLAT_TOP_TOLERANCE)).sum()) >= 3


def find_candidates(image: np.ndarray, *, half: int, min_snr: float, isolation: float,
                    saturation: float | None) -> list[dict]:
    """Point-source candidates of one cutout (C, H, W), before the compactness cut: peak position (pixels), peak
    significance, size (sigma, pixels), each band's sky level; steps 2 to 4 of the module docstring."""
    median, sigma = sky_background(image, clip_sigma=SKY_CLIP_SIGMA, max_iters=SKY_CLIP_ITERS)
    signif = (image - median[:, None, None]) / sigma[:, None, None]
    detect = signif.sum(0) / math.sqrt(len(image))
    smooth = ndimage.uniform_filter(detect, size=3, mode="nearest")
    peaks = (detect == ndimage.maximum_filter(detect, size=5, mode="nearest")) & (detect > min_snr)
    c, h, w = image.shape
    margin = half + 2  # room for the sub-pixel shift
    out = []
    for j, i in zip(*np.nonzero(peaks)):
        if not (margin <= j < h - margin and margin <= i < w - margin):
            continue
        if (signif[:, j, i] < 5.0).any():
            continue
        stamp = image[:, j - margin:j + margin + 1, i - margin:i + margin + 1]
        if saturation is not None and (stamp >= saturation).any():
            continue
        if any(_flat_top(image[b], j, i) for b in range(c)):
            continue
        summed = (stamp - median[:, None, None]).sum(0)
        size, cx, cy = adaptive_sigma_pix(summed, x0=margin, y0=margin)
        if not math.isfinite(size) or abs(cx - margin) > 1.5 or abs(cy - margin) > 1.5:
            continue
        yy, xx = np.mgrid[-margin:margin + 1, -margin:margin + 1]
        outside = np.hypot(xx, yy) > CORE_SIGMAS * size
        local = smooth[j - margin:j + margin + 1, i - margin:i + margin + 1]
        if local[outside].max(initial=-np.inf) >= max(5.0, isolation * smooth[j, i]):
            continue
        out.append({"x_pix": int(i), "y_pix": int(j), "snr": float(detect[j, i]), "size_pix": float(size),
                    "sky_median": median.tolist()})
    return out


def stellar_locus(sizes: np.ndarray) -> float:
    """The size of point sources: the median of the most compact tenth of the candidates' sizes (at least 5)."""
    ordered = np.sort(np.asarray(sizes, dtype=np.float64))
    return float(np.median(ordered[:max(5, len(ordered) // 10)]))


def recentred_stamp(image: np.ndarray, sky_median: np.ndarray, *, x_pix: int, y_pix: int, half: int) -> np.ndarray:
    """(C, 2 half + 1, 2 half + 1) sky-subtracted stamp of the star at (x_pix, y_pix), shifted (cubic spline,
    sub-pixel) so that its light centroid is the middle pixel, each band normalised to sum 1."""
    margin = half + 2
    big = image[:, y_pix - margin:y_pix + margin + 1, x_pix - margin:x_pix + margin + 1] - np.asarray(sky_median)[:, None, None]
    _, cx, cy = adaptive_sigma_pix(big.sum(0), x0=margin, y0=margin)
    out = np.empty((len(big), 2 * half + 1, 2 * half + 1))
    for b, plane in enumerate(big):
        shifted = ndimage.shift(plane, (margin - cy, margin - cx), order=3, mode="constant", cval=0.0)
        out[b] = shifted[2:-2, 2:-2]
        total = out[b].sum()
        out[b] = out[b] / total if total > 0 else np.nan
    return out


def _write_fits(path: Path, image: np.ndarray, header: dict) -> None:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(image.astype(np.float64))
    for key, value in header.items():
        hdu.header[key] = value
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True)


def build_psf(hosts, out_dir: Path, *, size: int = 21, min_snr: float = 30.0, max_stars: int = 200,
              compact_tolerance: float = 0.15, isolation: float = 0.05, saturation: float | None = None,
              min_stars: int = 5, progress: bool = False) -> PsfResult:
    """PSF images from the stars in `hosts` (a `read.HostSet`), one per band, written as
    ``out_dir/psf_<band>.fits`` (odd `size`, summing to 1; ready for ``--psf out_dir``), with ``out_dir/psf.json``
    listing the stars used; see the module docstring for the selection. Fewer than `min_stars` stars is an
    `InputError` saying what was found."""
    if size % 2 == 0 or size < 5:
        raise InputError(f"--size {size}: expected an odd stamp side of at least 5 pixels (the PSF's centre is a pixel)")
    if size > hosts.shape[-1] - 4:
        largest = hosts.shape[-1] - 4 - (hosts.shape[-1] % 2 == 0)
        raise InputError(f"--size {size}: the stamp must fit inside the {hosts.shape[-1]}-pixel cutouts with 2 pixels "
                         f"to spare; use --size {largest} or less")
    half = size // 2
    candidates = []
    for index in range(len(hosts)):
        image = hosts.read(index).astype(np.float64)
        for cand in find_candidates(image, half=half, min_snr=min_snr, isolation=isolation, saturation=saturation):
            candidates.append(dict(cand, host=index))
    if len(candidates) < min_stars:
        raise InputError(f"{hosts.source}: {len(candidates)} isolated unsaturated point-source candidate(s) above S/N "
                         f"{min_snr:g} in {len(hosts)} cutout(s), fewer than {min_stars}; lower --min-snr, give more "
                         "cutouts (or cutouts centred on stars), or give a PSF with --psf-fwhm")
    locus = stellar_locus(np.array([c["size_pix"] for c in candidates]))
    stars = [c for c in candidates if abs(c["size_pix"] - locus) <= compact_tolerance * locus and c["size_pix"] > 0.5 * locus]
    stars = sorted(stars, key=lambda c: (-c["snr"], c["host"], c["y_pix"], c["x_pix"]))[:max_stars]
    if len(stars) < min_stars:
        raise InputError(f"{hosts.source}: {len(stars)} star(s) on the stellar locus (size {locus:.2f} px), fewer than "
                         f"{min_stars}; give more cutouts or a PSF with --psf-fwhm")
    stamps = np.stack([recentred_stamp(hosts.read(s["host"]).astype(np.float64), np.array(s["sky_median"]),
                                       x_pix=s["x_pix"], y_pix=s["y_pix"], half=half) for s in stars])
    stack = np.nanmedian(stamps, axis=0)
    stack /= stack.sum(axis=(1, 2), keepdims=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, fwhm = [], []
    for b, band in enumerate(hosts.bands):
        sigma, _, _ = adaptive_sigma_pix(stack[b], x0=half, y0=half)
        fwhm.append(float(2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma))
        path = out_dir / f"psf_{band}.fits"
        _write_fits(path, stack[b], {"BAND": band, "NSTARS": len(stars), "FWHMPIX": round(fwhm[-1], 4),
                                     "COMMENT": "lensfinder psf: median of recentred, normalised star stamps; sums to 1"})
        files.append(path)
    record = {"source": str(Path(hosts.source).resolve()), "bands": list(hosts.bands), "size": size,
              "fwhm_pix": fwhm, "stellar_locus_sigma_pix": locus, "candidates": len(candidates),
              "settings": {"min_snr": min_snr, "max_stars": max_stars, "compact_tolerance": compact_tolerance,
                           "isolation": isolation, "saturation": saturation},
              "stars": [{"host_id": hosts.ids[s["host"]], "host_file": hosts.files[s["host"]], "x_pix": s["x_pix"],
                         "y_pix": s["y_pix"], "snr": s["snr"], "size_pix": s["size_pix"]} for s in stars]}
    write_text_atomic(out_dir / "psf.json", json.dumps(record, indent=1))
    return PsfResult(files, record["stars"], len(candidates), fwhm)
