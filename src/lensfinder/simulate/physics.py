"""Pure physics functions: arrays (or floats) in, arrays out; units in the names."""

from __future__ import annotations

import math

import numpy as np

# CODATA 2018 / IAU values, identical to astropy.constants (G, c, M_sun) and astropy.units.Mpc.
G_SI = 6.6743e-11
C_SI = 299792458.0
MSUN_KG = 1.988409870698051e30
MPC_M = 3.085677581491367e22
RAD_TO_ARCSEC = 180.0 / math.pi * 3600.0
AB_NANOMAGGY_ZERO_POINT = 22.5


def lens_distances_mpc(z_lens: float, z_source: float, *, h0: float, om0: float,
                       convention: str) -> tuple[float, float, float]:
    """(D_l, D_s, D_ls) in Mpc for a flat LambdaCDM cosmology.

    ``convention="angular"`` gives angular-diameter distances (the physical choice);
    ``"luminosity"`` reproduces the published DeepLense sets: D_l, D_s luminosity distances and
    D_ls = D_s - D_l.
    """
    from astropy.cosmology import FlatLambdaCDM

    if z_source <= z_lens:
        raise ValueError(f"z_source must exceed z_lens, found {z_source} <= {z_lens}")
    cosmo = FlatLambdaCDM(H0=h0, Om0=om0)
    if convention == "luminosity":
        d_l = cosmo.luminosity_distance(z_lens).value
        d_s = cosmo.luminosity_distance(z_source).value
        return d_l, d_s, d_s - d_l
    if convention == "angular":
        return (cosmo.angular_diameter_distance(z_lens).value,
                cosmo.angular_diameter_distance(z_source).value,
                cosmo.angular_diameter_distance(z_lens, z_source).value)
    raise ValueError(f"distances must be 'luminosity' or 'angular', found {convention!r}")


def theta_e_arcsec_from_mass(mass_msun, d_l_mpc: float, d_s_mpc: float, d_ls_mpc: float):
    """Point-mass Einstein radius theta_E = sqrt(4 G M / c^2 * D_ls / (D_l D_s)), in arcsec."""
    mass_kg = np.asarray(mass_msun, dtype=np.float64) * MSUN_KG
    theta_rad = np.sqrt(4.0 * G_SI * mass_kg / C_SI**2 * d_ls_mpc / (d_l_mpc * d_s_mpc * MPC_M))
    return theta_rad * RAD_TO_ARCSEC


def subhalo_mass_msun_from_uniform(u, *, mass_min_msun: float, mass_max_msun: float,
                                   slope: float = -0.9):
    """Inverse CDF of dN/dm ~ m^slope on [mass_min, mass_max] (exponent slope + 1 = 0.1)."""
    a = slope + 1.0
    lo, hi = mass_min_msun**a, mass_max_msun**a
    return (lo + (hi - lo) * np.asarray(u, dtype=np.float64)) ** (1.0 / a)


def subhalo_mass_cdf(mass_msun, *, mass_min_msun: float, mass_max_msun: float,
                     slope: float = -0.9):
    """CDF of the subhalo mass law (for tests)."""
    a = slope + 1.0
    lo, hi = mass_min_msun**a, mass_max_msun**a
    return (np.asarray(mass_msun, dtype=np.float64) ** a - lo) / (hi - lo)


def vortex_half_length_arcsec(axion_mass_ev, *, coeff_arcsec_ev: float = 0.03e-22):
    """Half length L of the vortex line: L = 0.03e-22 / m_a arcsec (DeepLenseSim, z_lens = 0.5)."""
    return coeff_arcsec_ev / np.asarray(axion_mass_ev, dtype=np.float64)


def vortex_positions_arcsec(half_length_arcsec: float, angle_rad: float, n_points: int):
    """x, y of ``n_points`` equally spaced masses on [-L, L] through the origin at ``angle_rad``."""
    s = np.linspace(-half_length_arcsec, half_length_arcsec, n_points)
    return s * np.cos(angle_rad), s * np.sin(angle_rad)


def mag_to_nanomaggies(mag):
    """AB magnitude -> flux in nanomaggies (zero point 22.5)."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - AB_NANOMAGGY_ZERO_POINT))


def cps_per_nanomaggy(magnitude_zero_point: float) -> float:
    """Detector counts per second produced by 1 nanomaggy for an instrument zero point."""
    return 10.0 ** (0.4 * (magnitude_zero_point - AB_NANOMAGGY_ZERO_POINT))


def background_sigma_cps(*, read_noise_e: float, exposure_time_s: float, num_exposures: int,
                         sky_brightness_mag: float, magnitude_zero_point: float,
                         pixel_scale_arcsec: float) -> float:
    """Gaussian background noise per pixel in counts/s (lenstronomy ``data_util.bkg_noise``)."""
    t_tot = exposure_time_s * num_exposures
    sky_cps_per_pixel = 10.0 ** (-0.4 * (sky_brightness_mag - magnitude_zero_point)) * pixel_scale_arcsec**2
    return math.sqrt(num_exposures * read_noise_e**2 + t_tot * sky_cps_per_pixel) / t_tot


def noise_sigma_cps(model_cps, *, background_sigma_cps: float, exposure_time_total_s: float):
    """Per-pixel noise sigma: background plus Poisson of the source counts (lenstronomy SimAPI)."""
    model = np.clip(np.asarray(model_cps, dtype=np.float64), 0.0, None)
    return np.sqrt(background_sigma_cps**2 + model / exposure_time_total_s)
