"""The one place where lenstronomy conventions are translated to caustics conventions.

Every parameter in lensfinder's samplers and manifests is in lenstronomy's conventions (the ones the
published DeepLense sets were made with); the renderer calls caustics' functional layer with the
values returned here. ``tests/test_simulate_conventions.py`` checks each translation against
lenstronomy itself.

- Ellipticity: lenstronomy (e1, e2) -> axis ratio q = (1 - |e|) / (1 + |e|) and position angle
  phi = arctan2(e2, e1) / 2; caustics takes (q, phi) directly.
- SIE Einstein radius: lenstronomy's theta_E is the product-average (sqrt(a b)) radius, deflection
  b / sqrt(1 - q^2) * atan(...) with b = theta_E sqrt(q); caustics' ``Rein`` is Keeton's b / sqrt(q),
  i.e. the same number: Rein = theta_E (no conversion, only the q/phi translation above).
- Sersic radius: lenstronomy's R_sersic is the geometric-mean radius, R = sqrt(q x'^2 + y'^2 / q);
  caustics measures the major axis, R = sqrt(x'^2 + y'^2 / q^2). So Re_caustics = R_sersic / sqrt(q).
  The amplitude is the surface brightness at R_sersic in both; b_n is lenstronomy's 1.9992 n - 0.3271.
- Flux per pixel: lenstronomy multiplies surface brightness (per arcsec^2) at the pixel centre by
  the pixel area, so pixel values are fluxes; ``surface_brightness_to_pixel_flux`` does the same.
- PSF: lenstronomy's GAUSSIAN PSF in ImageModel is ``scipy.ndimage.gaussian_filter`` (separable,
  kernel radius int(truncation * sigma_pix + 0.5), mode "nearest"); ``gaussian_kernel_1d`` builds
  that exact kernel and the renderer pads with edge replication.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gamma as _gamma_fn

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
MAX_ELLIPTICITY = 0.9999  # lenstronomy clips |e| at this value


def e1e2_to_q_phi(e1, e2):
    """lenstronomy ellipticity (e1, e2) -> (axis ratio q in (0, 1], position angle phi in rad)."""
    e1 = np.asarray(e1, dtype=np.float64)
    e2 = np.asarray(e2, dtype=np.float64)
    c = np.minimum(np.sqrt(e1**2 + e2**2), MAX_ELLIPTICITY)
    return (1.0 - c) / (1.0 + c), np.arctan2(e2, e1) / 2.0


def q_phi_to_e1e2(q, phi_rad):
    """Inverse of ``e1e2_to_q_phi``: axis ratio q in (0, 1] and angle -> lenstronomy (e1, e2)."""
    q = np.asarray(q, dtype=np.float64)
    c = (1.0 - q) / (1.0 + q)
    return c * np.cos(2.0 * np.asarray(phi_rad)), c * np.sin(2.0 * np.asarray(phi_rad))


def sie_rein_caustics(theta_e_arcsec):
    """lenstronomy SIE theta_E (product-average convention) -> caustics SIE ``Rein`` (identical)."""
    return np.asarray(theta_e_arcsec, dtype=np.float64)


def sersic_re_caustics(r_sersic_arcsec, q):
    """lenstronomy geometric-mean R_sersic -> caustics major-axis Re."""
    return np.asarray(r_sersic_arcsec, dtype=np.float64) / np.sqrt(np.asarray(q, dtype=np.float64))


def sersic_b_n(n_sersic):
    """lenstronomy's b_n approximation (caustics' ``k_lenstronomy``)."""
    return np.maximum(1.9992 * np.asarray(n_sersic, dtype=np.float64) - 0.3271, 1e-5)


def sersic_total_flux(amp, r_sersic_arcsec, n_sersic):
    """Total flux of a lenstronomy SERSIC_ELLIPSE with surface brightness ``amp`` at R_sersic.

    With the geometric-mean radius the ellipse area is pi R^2 for any q, so
    F = amp * 2 pi n R^2 exp(b_n) b_n^(-2n) Gamma(2n).
    """
    n = np.asarray(n_sersic, dtype=np.float64)
    b = sersic_b_n(n)
    return (np.asarray(amp) * 2.0 * np.pi * n * np.asarray(r_sersic_arcsec) ** 2
            * np.exp(b) * b ** (-2.0 * n) * _gamma_fn(2.0 * n))


def sersic_amp_from_flux(total_flux, r_sersic_arcsec, n_sersic):
    """Surface brightness at R_sersic giving ``total_flux`` (inverse of ``sersic_total_flux``)."""
    return np.asarray(total_flux) / sersic_total_flux(1.0, r_sersic_arcsec, n_sersic)


def surface_brightness_to_pixel_flux(surface_brightness, pixel_scale_arcsec: float,
                                     supersampling: int = 1):
    """Surface brightness (per arcsec^2) at (sub)pixel centres -> flux per (sub)pixel."""
    return surface_brightness * (pixel_scale_arcsec / supersampling) ** 2


def gaussian_kernel_1d(fwhm_arcsec, pixel_scale_arcsec: float, truncation_sigma: float) -> np.ndarray:
    """The normalised 1-D kernel of ``scipy.ndimage.gaussian_filter`` used by lenstronomy's
    GAUSSIAN PSF: sigma in pixels, radius int(truncation * sigma + 0.5). For an array of FWHMs, one
    kernel per entry (..., 2R + 1), each centred and zero-padded to the largest radius R."""
    sigma_pix = np.asarray(fwhm_arcsec, dtype=np.float64) * FWHM_TO_SIGMA / pixel_scale_arcsec
    radius = (truncation_sigma * sigma_pix + 0.5).astype(np.int64)
    x = np.arange(-radius.max(), radius.max() + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * x**2 / sigma_pix[..., None] ** 2) * (np.abs(x) <= radius[..., None])
    return kernel / kernel.sum(-1, keepdims=True)


def pixel_grid_arcsec(num_pix: int, pixel_scale_arcsec: float, supersampling: int = 1):
    """1-D pixel-centre coordinates, origin at the image centre (lenstronomy ``make_grid``).

    Image rows are y, columns x: ``image[j, i]`` is at (x[i], y[j]), as lenstronomy's array2image.
    """
    n = num_pix * supersampling
    d = pixel_scale_arcsec / supersampling
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * d
