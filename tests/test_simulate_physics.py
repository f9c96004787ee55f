"""Physics, presets and the caustics<->lenstronomy convention translation."""

import numpy as np
import pytest
from scipy import ndimage, stats

from lensfinder.simulate import conventions as conv
from lensfinder.simulate import list_presets, physics
from lensfinder.simulate import population as pop
from lensfinder.simulate.presets import load_preset


def test_presets_are_listed_with_descriptions_and_unknown_names_are_refused():
    presets = list_presets()
    assert {"deeplense-model-i", "deeplense-model-ii", "deeplense-model-iii", "lsst-gri", "des-gri"} <= set(presets)
    assert all(isinstance(d, str) and d for d in presets.values())
    for name in presets:  # every listed preset loads, merged over its task's shared physics
        preset = load_preset(name)
        assert preset["name"] == name and preset["num_pix"] > 0 and preset["pixel_scale_arcsec"] > 0
        assert ("confusers" in preset) == (preset["task"] == "lensfinding")
    with pytest.raises(ValueError, match="known presets: .*deeplense-model-i"):
        load_preset("model-iv")
    with pytest.raises(ValueError, match="lensfinding preset"):
        load_preset("lsst-gri", task="substructure")


def test_preset_instrument_numbers_match_lenstronomy():
    from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST
    from lenstronomy.SimulationAPI.ObservationConfig.LSST import LSST

    for name, cls in (("lsst-gri", LSST), ("des-gri", DES)):
        pre = load_preset(name)
        for band, numbers in pre["bands"].items():
            ref = cls(band=band).kwargs_single_band()
            assert numbers["seeing_arcsec"] == ref["seeing"]
            assert numbers["sky_brightness_mag"] == ref["sky_brightness"]
            assert numbers["magnitude_zero_point"] == ref["magnitude_zero_point"]
            assert numbers["exposure_time_s"] * numbers["num_exposures"] == ref["exposure_time"] * ref["num_exposures"]
        assert pre["pixel_scale_arcsec"] == ref["pixel_scale"] and pre["read_noise_e"] == ref["read_noise"]
    euclid = Euclid(band="VIS").kwargs_single_band()
    ii = load_preset("deeplense-model-ii")
    assert (ii["pixel_scale_arcsec"], ii["psf_fwhm_arcsec"]) == (euclid["pixel_scale"], euclid["seeing"])
    assert ii["noise"]["magnitude_zero_point"] == euclid["magnitude_zero_point"]
    hst = HST(band="WFC3_F160W", psf_type="GAUSSIAN").kwargs_single_band()
    iii = load_preset("deeplense-model-iii")
    assert (iii["pixel_scale_arcsec"], iii["psf_fwhm_arcsec"]) == (hst["pixel_scale"], hst["seeing"])


def test_einstein_radius_of_1e12_msun_in_both_distance_conventions():
    # hand computation from the comoving distances of flat LambdaCDM(70, 0.3) (5 digits):
    # D_M(0.5) = 1888.6 Mpc, D_M(1.0) = 3303.8 Mpc; D_L = D_M (1 + z), D_A = D_M / (1 + z),
    # D_A(0.5, 1.0) = (D_M(1.0) - D_M(0.5)) / 2 (flat). Spec: ~1.28" luminosity, ~1.66" angular.
    dm1, dm2 = 1888.6, 3303.8
    lum = (dm1 * 1.5, dm2 * 2.0, dm2 * 2.0 - dm1 * 1.5)
    ang = (dm1 / 1.5, dm2 / 2.0, (dm2 - dm1) / 2.0)
    for convention, d_hand, expected in (("luminosity", lum, 1.2815), ("angular", ang, 1.6645)):
        d = physics.lens_distances_mpc(0.5, 1.0, h0=70, om0=0.3, convention=convention)
        np.testing.assert_allclose(d, d_hand, rtol=2e-4)
        hand = np.sqrt(4 * 6.6743e-11 * 1e12 * 1.98841e30 / 299792458.0**2 * d_hand[2]
                       / (d_hand[0] * d_hand[1] * 3.0856776e22)) * 206264.806
        assert hand == pytest.approx(expected, abs=2e-4)
        assert physics.theta_e_arcsec_from_mass(1e12, *d) == pytest.approx(expected, abs=2e-4)
    with pytest.raises(ValueError, match="luminosity' or 'angular"):
        physics.lens_distances_mpc(0.5, 1.0, h0=70, om0=0.3, convention="comoving")


def _substructure(cls, n, preset="deeplense-model-i"):
    cfg = load_preset(preset)
    d = physics.lens_distances_mpc(0.5, 1.0, h0=70, om0=0.3, convention="luminosity")
    return [pop.sample_substructure(pop.object_rngs(3, "substructure", "train", 1, i)[0], cls, cfg, distances_mpc=d)
            for i in range(n)]


def test_sphere_has_exactly_25_subhalos_with_the_m_minus_0_9_mass_law():
    params = _substructure("sphere", 200)
    assert all(p["n_subhalos"] == 25 and len(p["point_mass"]) == 25 for p in params)
    masses = np.concatenate([p["point_mass"] for p in params])
    assert masses.min() >= 1e6 and masses.max() <= 1e10
    cdf = lambda m: physics.subhalo_mass_cdf(m, mass_min_msun=1e6, mass_max_msun=1e10, slope=-0.9)  # noqa: E731
    assert stats.kstest(masses, cdf).pvalue > 0.01
    # the test has power: a m^-1.9 law is rejected
    steeper = lambda m: physics.subhalo_mass_cdf(m, mass_min_msun=1e6, mass_max_msun=1e10, slope=-1.9)  # noqa: E731
    assert stats.kstest(masses, steeper).pvalue < 1e-6
    radii = np.hypot(np.concatenate([p["point_x"] for p in params]), np.concatenate([p["point_y"] for p in params]))
    assert radii.min() >= 0.25 and radii.max() <= 2.0


def test_vortex_length_from_axion_mass():
    params = _substructure("vort", 100)
    for p in params:
        assert 1e-24 <= p["axion_mass_ev"] <= 1e-22
        assert p["vortex_half_length_arcsec"] == pytest.approx(0.03e-22 / p["axion_mass_ev"], rel=1e-12)
        assert len(p["point_mass"]) == 100 and p["point_mass"].sum() == pytest.approx(3e10)
        ends = np.hypot(p["point_x"][[0, -1]], p["point_y"][[0, -1]])
        np.testing.assert_allclose(ends, p["vortex_half_length_arcsec"], rtol=1e-12)
    assert physics.vortex_half_length_arcsec(1e-22) == pytest.approx(0.03)
    assert physics.vortex_half_length_arcsec(1e-24) == pytest.approx(3.0)
    lengths = np.log10([p["axion_mass_ev"] for p in params])
    assert stats.kstest(lengths, stats.uniform(-24, 2).cdf).pvalue > 0.01


def test_no_class_has_no_point_masses():
    assert all(p["n_subhalos"] == 0 and len(p["point_mass"]) == 0 for p in _substructure("no", 5))


# ----------------------------------------------------------------------------- conventions
def test_ellipticity_translation_matches_lenstronomy():
    from lenstronomy.Util import param_util

    for e1, e2 in ((0.1, 0.0), (-0.1, 0.1), (0.03, -0.2)):
        phi_ref, q_ref = param_util.ellipticity2phi_q(e1, e2)
        q, phi = conv.e1e2_to_q_phi(e1, e2)
        assert (q, phi) == pytest.approx((q_ref, phi_ref), abs=1e-14)
        np.testing.assert_allclose(conv.q_phi_to_e1e2(q, phi), (e1, e2), atol=1e-14)


def test_sersic_radius_and_amplitude_translation_matches_lenstronomy():
    import torch
    from caustics.light.func import brightness_sersic
    from lenstronomy.LightModel.light_model import LightModel

    x, y = np.meshgrid(np.linspace(-1.3, 1.1, 31), np.linspace(-0.9, 1.4, 29))
    kw = {"amp": 3.0, "R_sersic": 0.4, "n_sersic": 2.5, "e1": 0.2, "e2": -0.1, "center_x": 0.1, "center_y": -0.05}
    ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(x, y, [kw])
    q, phi = conv.e1e2_to_q_phi(kw["e1"], kw["e2"])
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ours = brightness_sersic(t(0.1), t(-0.05), t(q), t(phi), t(2.5), t(conv.sersic_re_caustics(0.4, q)), 3.0,
                             t(x), t(y), t(conv.sersic_b_n(2.5))).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    # total flux for the geometric-mean radius: compare with a fine numerical integral
    g = np.linspace(-12, 12, 2401)
    gx, gy = np.meshgrid(g, g)
    numeric = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(gx, gy, [dict(kw, center_x=0, center_y=0)]).sum() * 0.01**2
    assert conv.sersic_total_flux(3.0, 0.4, 2.5) == pytest.approx(numeric, rel=2e-3)
    assert conv.sersic_amp_from_flux(conv.sersic_total_flux(3.0, 0.4, 2.5), 0.4, 2.5) == pytest.approx(3.0)


def test_sie_einstein_radius_convention_matches_lenstronomy():
    import torch
    from caustics.lenses.func import reduced_deflection_angle_sie
    from lenstronomy.LensModel.lens_model import LensModel

    x, y = np.meshgrid(np.linspace(-2.05, 2.0, 21), np.linspace(-1.95, 2.1, 23))
    kw = {"theta_E": 1.3, "e1": 0.15, "e2": -0.05, "center_x": 0.0, "center_y": 0.0}
    ref = LensModel(["SIE"]).alpha(x, y, [kw])
    q, phi = conv.e1e2_to_q_phi(kw["e1"], kw["e2"])
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ax, ay = reduced_deflection_angle_sie(t(0.0), t(0.0), t(q), t(phi), t(conv.sie_rein_caustics(1.3)), t(x), t(y))
    np.testing.assert_allclose(ax.numpy(), ref[0], atol=1e-9)
    np.testing.assert_allclose(ay.numpy(), ref[1], atol=1e-9)


def test_psf_kernel_is_scipy_gaussian_filter_as_used_by_lenstronomy():
    import torch

    from lensfinder.simulate.render import convolve_separable

    rng = np.random.default_rng(0)
    image = rng.random((20, 23))
    for fwhm, pix, trunc in ((0.087, 0.05, 3), (0.71, 0.2, 5), (0.16, 0.101, 5)):
        sigma = fwhm * conv.FWHM_TO_SIGMA / pix
        ref = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=trunc)
        kern = torch.tensor(conv.gaussian_kernel_1d(fwhm, pix, trunc))[None]
        ours = convolve_separable(torch.tensor(image)[None, None], kern)[0, 0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-14)


def test_flux_per_pixel_is_surface_brightness_times_pixel_area():
    assert conv.surface_brightness_to_pixel_flux(2.0, 0.2) == pytest.approx(0.08)
    assert conv.surface_brightness_to_pixel_flux(2.0, 0.2, supersampling=2) == pytest.approx(0.02)


# ----------------------------------------------------------------------------- noise
def test_ziggurat_normal_is_exact_in_the_body_the_wedges_and_the_tail():
    """The noise kernel's own normal sampler against N(0, 1): 200 equiprobable bins (a wrong layer
    or wedge shows up as a bin off by far more than its Poisson error) and the tail beyond r."""
    import numba

    from lensfinder.simulate import kernels

    @numba.njit
    def draws(n, state):
        return np.array([kernels._normal(state) for _ in range(n)])

    x = draws(2_000_000, kernels.seed_state(np.random.default_rng(5)))
    observed = np.bincount(np.searchsorted(stats.norm.ppf(np.arange(1, 200) / 200), x), minlength=200)
    assert stats.chisquare(observed).pvalue > 1e-3
    tail = np.abs(x)[np.abs(x) > kernels._ZIG_R]
    assert stats.binomtest(tail.size, x.size, 2 * stats.norm.sf(kernels._ZIG_R)).pvalue > 1e-3
    assert stats.kstest(tail, stats.truncnorm(kernels._ZIG_R, np.inf).cdf).pvalue > 1e-3
    assert (x > 0).mean() == pytest.approx(0.5, abs=2e-3)


@pytest.mark.parametrize("lam", [0.02, 0.124, 0.5, 4.6, 9.9, 37.3, 63.99, 64.0, 400.0])
def test_poisson_sampler_is_exact(lam):
    """Both branches of the compiled sampler (tables below 64, PTRS above) against the pmf."""
    import numba

    from lensfinder.simulate import kernels

    @numba.njit
    def draws(lam, n, state):
        return np.array([kernels._poisson(lam, state) for _ in range(n)])

    n = 200_000
    top = int(stats.poisson.ppf(0.9999, lam))
    state = kernels.seed_state(np.random.default_rng(3))
    observed = np.bincount(np.minimum(draws(lam, n, state), top), minlength=top + 1)
    expected = np.append(stats.poisson.pmf(np.arange(top), lam), stats.poisson.sf(top - 1, lam)) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("level", [0.0, 0.02, 0.2])
def test_deeplense_noise_has_the_published_distribution(level):
    """Counts for a flat image: the same distribution as DeepLenseSim's own numpy recipe."""
    from lensfinder.simulate import reference
    from lensfinder.simulate.engine import SubstructureSimulator

    sim = SubstructureSimulator("deeplense-model-i")
    image, t, rms = np.full((300, 300), level), 2000.0, sim.preset["noise"]["background_rms"]
    ours = sim.add_noise(image, {"exposure_s": t}, np.random.default_rng(1)).ravel()
    ref = reference.deeplense_noise(image, t, rms, np.random.default_rng(2)).ravel()
    top = int(np.quantile(ref, 0.999))
    table = np.stack([np.bincount(np.minimum(x, top).astype(int), minlength=top + 1) for x in (ours, ref)])
    assert stats.chi2_contingency(table[:, table.sum(axis=0) > 0]).pvalue > 1e-3
