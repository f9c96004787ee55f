"""Painting simulated lensed sources onto real cutouts (issue 16): pure functions, arrays in, arrays out.

A host is one of the user's cutouts, (C, H, W) in the host's own units: a pixel value F means the AB magnitude
``zero_point - 2.5 log10(F)``. The painted light is a source of lensfinder's population (``population``'s lensed
galaxies and quasars, colours in g, r, i), lensed by an SIE + external shear (``render.deflection_sie_shear``)
centred on the host's light peak, rendered on a supersampled grid padded by the PSF's radius, convolved with the
PSF image of each band, converted from nanomaggies to the host's units and added to the host. Pixels that the
painted light does not reach (beyond the source's support, where it is fainter than a small fraction of the
host's sky noise, dilated by the PSF's footprint) keep the host's bytes.

Coordinates as everywhere in lensfinder: arcsec from the cutout centre, ``image[j, i]`` at (x[i], y[j])
(``conventions.pixel_grid_arcsec``), parameters in lenstronomy conventions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from . import conventions as conv
from . import physics, population, render

POPULATION_BANDS = ("g", "r", "i")  # the bands the source population's colours are defined in (slot amp order)


# ----------------------------------------------------------------------------- the host's own pixels
def sky_background(host: np.ndarray, *, clip_sigma: float, max_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band sky level and noise (C,), (C,) of a cutout (C, H, W) from its own pixels: the median and the
    MAD-based standard deviation of the pixels left after iterative sigma clipping (astropy's
    ``sigma_clipped_stats``), so that galaxies and stars do not count as noise. A band without noise (a
    simulated noise-free host) gets a noise of 1e-12 of its largest pixel (1 if it is all zeros), never 0."""
    from astropy.stats import sigma_clipped_stats

    median, sigma = np.zeros(len(host)), np.zeros(len(host))
    for b, plane in enumerate(np.asarray(host, dtype=np.float64)):
        _, median[b], sigma[b] = sigma_clipped_stats(plane, sigma=clip_sigma, maxiters=max_iters, stdfunc="mad_std")
        if not sigma[b] > 0:
            peak = float(np.abs(plane).max())
            sigma[b] = 1e-12 * peak if peak > 0 else 1.0
    return median, sigma


def _pixel_axis(num_pix: int, pixel_scale_arcsec: float) -> np.ndarray:
    return conv.pixel_grid_arcsec(num_pix, pixel_scale_arcsec)


def _parabola_offset(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from three samples (the vertex of their parabola), within half a pixel."""
    curvature = left - 2.0 * centre + right
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def light_peak_arcsec(host: np.ndarray, sky_median: np.ndarray, sky_sigma: np.ndarray, *, pixel_scale_arcsec: float,
                      search_radius_arcsec: float) -> tuple[float, float]:
    """(x, y) arcsec of the host's light peak: the maximum of the bands' summed significance (each band minus its
    sky, over its noise), smoothed by a Gaussian of 1 pixel, within `search_radius_arcsec` of the cutout centre
    (the target, not a neighbour or a star elsewhere in the cutout), refined along each axis to the vertex of the
    parabola through it and its two neighbours (within 0.01" on the tests' noisy exponential galaxies)."""
    n = host.shape[-1]
    significance = ((host - sky_median[:, None, None]) / sky_sigma[:, None, None]).sum(0)
    smooth = ndimage.gaussian_filter(significance, 1.0, mode="nearest")
    axis = _pixel_axis(n, pixel_scale_arcsec)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    inside = xx**2 + yy**2 <= max(search_radius_arcsec, pixel_scale_arcsec) ** 2
    j, i = np.unravel_index(np.argmax(np.where(inside, smooth, -np.inf)), smooth.shape)
    dx = _parabola_offset(smooth[j, i - 1], smooth[j, i], smooth[j, i + 1]) if 0 < i < n - 1 else 0.0
    dy = _parabola_offset(smooth[j - 1, i], smooth[j, i], smooth[j + 1, i]) if 0 < j < n - 1 else 0.0
    return float(axis[i] + dx * pixel_scale_arcsec), float(axis[j] + dy * pixel_scale_arcsec)


def _aperture(num_pix: int, pixel_scale_arcsec: float, x_arcsec: float, y_arcsec: float, radius_arcsec: float):
    axis = _pixel_axis(num_pix, pixel_scale_arcsec)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    dx, dy = xx - x_arcsec, yy - y_arcsec
    return dx, dy, dx**2 + dy**2 <= radius_arcsec**2


def light_shape(plane: np.ndarray, sky_median: float, sky_sigma: float, *, x_arcsec: float, y_arcsec: float,
                pixel_scale_arcsec: float, radius_arcsec: float) -> tuple[float, float]:
    """(axis ratio q in [0.3, 1], position angle phi in rad, lenstronomy's: the major axis from +x) of one band's
    light within `radius_arcsec` of (x, y), from the second moments of the pixels more than 2 sigma above the sky.
    A round (q = 1, phi = 0) answer when there are too few such pixels to say."""
    dx, dy, inside = _aperture(plane.shape[-1], pixel_scale_arcsec, x_arcsec, y_arcsec, radius_arcsec)
    w = np.where(inside & (plane - sky_median > 2.0 * sky_sigma), plane - sky_median, 0.0)
    if np.count_nonzero(w) < 5:
        return 1.0, 0.0
    total = w.sum()
    mxx, myy, mxy = (w * dx * dx).sum() / total, (w * dy * dy).sum() / total, (w * dx * dy).sum() / total
    half_diff = math.hypot(0.5 * (mxx - myy), mxy)
    major, minor = 0.5 * (mxx + myy) + half_diff, 0.5 * (mxx + myy) - half_diff
    q = math.sqrt(max(minor, 0.0) / major) if major > 0 else 1.0
    return float(min(1.0, max(0.3, q))), float(0.5 * math.atan2(2.0 * mxy, mxx - myy) % math.pi)


def aperture_magnitudes(host: np.ndarray, sky_median: np.ndarray, zero_point: np.ndarray, *, x_arcsec: float,
                        y_arcsec: float, pixel_scale_arcsec: float, radius_arcsec: float) -> np.ndarray:
    """AB magnitude (C,) of the sky-subtracted light within `radius_arcsec` of (x, y) in each band:
    ``zero_point - 2.5 log10(flux)``; NaN where the flux is not positive."""
    _, _, inside = _aperture(host.shape[-1], pixel_scale_arcsec, x_arcsec, y_arcsec, radius_arcsec)
    flux = ((host - sky_median[:, None, None]) * inside).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, np.asarray(zero_point) - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)


def theta_e_from_host(mags: dict[str, float], relation: dict, normal_draw: float) -> float:
    """Einstein radius (arcsec) from the host's magnitude in `relation["band"]` and its colour `relation["colour"]`
    (two band names, bluer minus redder) with the relation of presets/_lensfinding.yaml (``paint.theta_e``):
    log10(theta_E) = log10(theta_e_ref_arcsec) + mag_slope (m - mag_ref) + colour_slope (colour - colour_ref)
    + scatter_dex * `normal_draw`, clipped to range_arcsec. A magnitude or colour that is missing or NaN (a band
    the host lacks, no flux in the aperture) counts as the reference value: no information, no shift."""
    mag = mags.get(relation["band"], math.nan)
    blue, red = relation["colour"]
    colour = mags.get(blue, math.nan) - mags.get(red, math.nan)
    log_theta = (math.log10(relation["theta_e_ref_arcsec"])
                 + (relation["mag_slope"] * (mag - relation["mag_ref"]) if math.isfinite(mag) else 0.0)
                 + (relation["colour_slope"] * (colour - relation["colour_ref"]) if math.isfinite(colour) else 0.0)
                 + relation["scatter_dex"] * normal_draw)
    lo, hi = relation["range_arcsec"]
    return float(min(hi, max(lo, 10.0**log_theta)))


# ----------------------------------------------------------------------------- one painted lens's parameters
def sample_painted_lens(rng: np.random.Generator, preset: dict, *, x_arcsec: float, y_arcsec: float, light_q: float,
                        light_phi_rad: float, theta_e_arcsec: float) -> dict:
    """Lens and source of one painted object, from the lens-finding population of `preset`: an SIE at the host's
    light peak (axis ratio the light's plus N(0, mass_q_scatter), clipped to [0.3, 1]; the light's orientation),
    external shear up to shear_max, and a lensed galaxy (or, with the population's quasar fraction, a lensed
    quasar: point images from the lens equation and its host galaxy)."""
    gamma, gamma_angle = rng.uniform(0.0, preset["shear_max"]), rng.uniform(0.0, math.pi)
    lens = {"theta_e_arcsec": float(theta_e_arcsec),
            "mass_q": float(min(1.0, max(0.3, light_q + rng.normal(0.0, preset["mass_q_scatter"])))),
            "mass_phi_rad": float(light_phi_rad), "shear_gamma1": gamma * math.cos(2 * gamma_angle),
            "shear_gamma2": gamma * math.sin(2 * gamma_angle),
            "deflector_x_arcsec": float(x_arcsec), "deflector_y_arcsec": float(y_arcsec)}
    if rng.uniform() < preset["quasar"]["fraction"]:
        sources, points, src = population._quasar(rng, preset, lens, x_arcsec, y_arcsec)
        src = dict(src, source_kind="quasar")
    else:
        sources, src = population._lensed_source(rng, preset, theta_e_arcsec, x_arcsec, y_arcsec)
        points, src = [], dict(src, source_kind="galaxy", n_images=0)
    return {**lens, **src, "sources": sources, "points": points}


# ----------------------------------------------------------------------------- rendering
def band_indices(bands: list[str]) -> list[int]:
    """Where each of the host's bands sits in the population's (g, r, i) amplitudes; ValueError for another band."""
    unknown = [b for b in bands if b not in POPULATION_BANDS]
    if unknown:
        raise ValueError(f"band(s) {', '.join(unknown)}: the source population's colours are defined in "
                         f"{', '.join(POPULATION_BANDS)} only")
    return [POPULATION_BANDS.index(b) for b in bands]


def lensed_source_nmgy(params: dict, *, num_pix: int, pixel_scale_arcsec: float, supersampling: int,
                       band_index: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The lensed source of `params` (``sample_painted_lens``'s keys: the lens, ``sources`` Sersic slots,
    ``points`` image-plane point images) before the PSF, as flux per pixel in nanomaggies on a `num_pix` square
    grid centred like the cutout: (C, num_pix, num_pix) float64, plus the extended part's unlensed total flux (C,).
    Sersic slots are evaluated at the centres of `supersampling`^2 sub-pixels traced back through the SIE + shear
    and summed per pixel; each point image's flux goes into the sub-pixel holding it."""
    axis = conv.pixel_grid_arcsec(num_pix, pixel_scale_arcsec, supersampling)
    step = pixel_scale_arcsec / supersampling
    y64, x64 = np.meshgrid(axis, axis, indexing="ij")
    one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    phi = params["mass_phi_rad"]
    ax, ay = render.deflection_sie_shear(
        torch.from_numpy(x64), torch.from_numpy(y64), x0=one(params["deflector_x_arcsec"]),
        y0=one(params["deflector_y_arcsec"]), q=one(params["mass_q"]), cos_phi=one(math.cos(phi)),
        sin_phi=one(math.sin(phi)), rein=one(conv.sie_rein_caustics(params["theta_e_arcsec"])),
        gamma1=one(params["shear_gamma1"]), gamma2=one(params["shear_gamma2"]))
    bx, by = x64 - ax[0].numpy(), y64 - ay[0].numpy()
    amps = np.array([[slot["amp"][k] for k in band_index] for slot in params["sources"]]).reshape(-1, len(band_index))
    sub = np.zeros((len(band_index),) + bx.shape)
    unlensed = np.zeros(len(band_index))
    for slot, amp in zip(params["sources"], amps):
        xr, yr = render.rotate(bx, by, x0=slot["x"], y0=slot["y"], cos_phi=math.cos(slot["phi"]),
                               sin_phi=math.sin(slot["phi"]))
        radius = np.sqrt(slot["q"] * xr**2 + yr**2 / slot["q"]) / slot["r_eff"]  # lenstronomy's R / R_sersic
        b_n = float(conv.sersic_b_n(slot["n"]))
        unit = np.exp(np.maximum(-b_n * (radius ** (1.0 / slot["n"]) - 1.0), -700.0))
        sub += amp[:, None, None] * conv.surface_brightness_to_pixel_flux(unit, pixel_scale_arcsec, supersampling)
        unlensed += amp * conv.sersic_total_flux(1.0, slot["r_eff"], slot["n"])
    for point in params.get("points", ()):
        i, j = round((point["x"] - axis[0]) / step), round((point["y"] - axis[0]) / step)
        if 0 <= i < len(axis) and 0 <= j < len(axis):
            sub[:, j, i] += np.asarray(point["flux"])[band_index]
    return render.downsample_sum(torch.from_numpy(sub), supersampling).numpy(), unlensed


def supersampling_for(params: dict, *, pixel_scale_arcsec: float, least: int, subpixels_per_r_eff: float,
                      most: int) -> int:
    """Sub-pixels per pixel side for `params`' sources: enough that the most compact Sersic slot's R_sersic spans
    `subpixels_per_r_eff` sub-pixels, between `least` and `most` (a compact source sampled too coarsely has its
    flux wrong by up to 15 % at 4 sub-pixels of 0.05" for R_sersic 0.05"; at 2 sub-pixels per R_sersic, 1.5 %)."""
    r_min = min((slot["r_eff"] for slot in params["sources"]), default=math.inf)
    wanted = math.ceil(subpixels_per_r_eff * pixel_scale_arcsec / r_min) if math.isfinite(r_min) else least
    return int(min(most, max(least, wanted)))


def truncate_support(flux: np.ndarray, floor) -> np.ndarray:
    """A copy of (C, H, W) `flux` with the pixels below `floor` (per band (C,), or one value; the same units) set
    to exactly 0: the source's support is finite, so the PSF-convolved light reaches a finite part of the cutout.
    The painting's floor is a small fraction of each band's sky noise, so what is cut is far below the noise."""
    floor = np.asarray(floor, dtype=np.float64)
    return np.where(flux >= (floor[:, None, None] if floor.ndim == 1 else floor), flux, 0.0)


def gaussian_psf(fwhm_arcsec, *, pixel_scale_arcsec: float, truncation_sigma: float) -> np.ndarray:
    """Per-band Gaussian PSF images (C, K, K), each summing to 1: the outer product of the band's 1-D kernel
    (``conventions.gaussian_kernel_1d``, lenstronomy's truncated Gaussian), K the largest band's."""
    k = conv.gaussian_kernel_1d(np.atleast_1d(np.asarray(fwhm_arcsec, dtype=np.float64)), pixel_scale_arcsec,
                                truncation_sigma)
    return k[:, :, None] * k[:, None, :]


def convolve_psf(flux: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """(C, H, W) convolved band by band with (C, K, K) PSF images (K odd, centred), zero outside the image
    (render on a grid padded by K // 2 and crop, and nothing is lost at the cutout's edges)."""
    return np.stack([ndimage.convolve(plane, kernel, mode="constant", cval=0.0) for plane, kernel in zip(flux, psf)])


def nanomaggies_to_host_units(flux_nmgy, zero_point):
    """Flux in nanomaggies (AB zero point 22.5) -> the host's units, whose zero point is `zero_point` (per band,
    (C,) or a scalar): a source of magnitude m has 10^(-0.4 (m - zero_point)) there."""
    zp = np.asarray(zero_point, dtype=np.float64)
    scale = 10.0 ** (0.4 * (zp - physics.AB_NANOMAGGY_ZERO_POINT))
    return np.asarray(flux_nmgy) * (scale[:, None, None] if scale.ndim == 1 else scale)


def painted_light(params: dict, psf: np.ndarray, *, num_pix: int, pixel_scale_arcsec: float, zero_point,
                  supersampling: int, support_floor, band_index: list[int]) -> tuple[np.ndarray, dict]:
    """The light painted onto a host: the lensed source of `params` in the host's units (`zero_point`, per band or
    one), its pixels below `support_floor` (host units, per band or one) set to 0, PSF-convolved (`psf` (C, K, K),
    each summing to 1): (C, num_pix, num_pix) float64, exactly 0 where it does not reach. Also the magnification
    (lensed over unlensed flux of the extended source in the last band, on the grid padded by the PSF's radius)."""
    pad = psf.shape[-1] // 2
    flux, unlensed = lensed_source_nmgy(params, num_pix=num_pix + 2 * pad, pixel_scale_arcsec=pixel_scale_arcsec,
                                        supersampling=supersampling, band_index=band_index)
    magnification = float(flux[-1].sum() / unlensed[-1]) if unlensed[-1] > 0 else math.nan
    flux = truncate_support(nanomaggies_to_host_units(flux, zero_point), support_floor)
    light = convolve_psf(flux, psf)[:, pad:pad + num_pix, pad:pad + num_pix]
    return light, {"magnification": magnification}


def add_to_host(host: np.ndarray, light: np.ndarray) -> np.ndarray:
    """host + light as float32 (C, H, W); where the light is exactly 0 the host's own float32 value is kept
    bit for bit (adding 0.0 would turn a -0.0 into +0.0)."""
    host = np.asarray(host, dtype=np.float32)
    return np.where(light != 0, (host + light).astype(np.float32), host)


def arc_snr(light: np.ndarray, sky_sigma: np.ndarray) -> float:
    """S/N of the painted light against the host's sky noise: sqrt(sum over pixels of (light / sigma)^2) in each
    band, the best band's (as the simulator's arc_snr, there against the full noise of the simulated pixels)."""
    ratio = light / np.asarray(sky_sigma, dtype=np.float64)[:, None, None]
    return float(np.sqrt((ratio**2).sum(axis=(1, 2))).max())
