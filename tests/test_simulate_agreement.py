"""Noiseless images for identical parameters, lensfinder (caustics) vs lenstronomy: max abs
difference <= 1e-5 of the peak. Both evaluate pixel centres (no supersampling), float64."""

import numpy as np
import pytest
import torch

from lensfinder.simulate import population as pop
from lensfinder.simulate import reference
from lensfinder.simulate.engine import LensfindingSimulator, SubstructureSimulator


@pytest.mark.parametrize("preset", ["deeplense-model-i", "deeplense-model-ii", "deeplense-model-iii"])
@pytest.mark.parametrize("cls", pop.SUBSTRUCTURE_CLASSES)
def test_substructure_matches_lenstronomy(preset, cls):
    sim = SubstructureSimulator(preset, dtype=torch.float64)
    for index in range(2):
        p = pop.sample_substructure(pop.object_rngs(11, "substructure", "test", 0, index)[0], cls, sim.preset,
                                    distances_mpc=sim.distances_mpc)
        ours = sim.render([p])[0, 0].numpy()
        ref = reference.render_substructure(sim, p)
        assert ours.shape == ref.shape == (sim.num_pix, sim.num_pix)
        assert np.abs(ours - ref).max() <= 1e-5 * ref.max()


def test_substructure_classes_differ_beyond_the_tolerance():
    """The agreement test can fail: subhalos change the image by far more than 1e-5 of the peak."""
    sim = SubstructureSimulator("deeplense-model-i", dtype=torch.float64)
    rng = lambda: pop.object_rngs(11, "substructure", "test", 0, 0)[0]  # noqa: E731
    no = pop.sample_substructure(rng(), "no", sim.preset, distances_mpc=sim.distances_mpc)
    sphere = pop.sample_substructure(rng(), "sphere", sim.preset, distances_mpc=sim.distances_mpc)
    ref_no = reference.render_substructure(sim, no)
    assert np.abs(sim.render([sphere])[0, 0].numpy() - ref_no).max() > 1e-3 * ref_no.max()


def test_angular_distances_match_lenstronomy_too():
    sim = SubstructureSimulator("deeplense-model-iii", distances="angular", dtype=torch.float64)
    assert sim.theta_e_arcsec == pytest.approx(1.6645, abs=2e-4)
    p = pop.sample_substructure(pop.object_rngs(1, "substructure", "test", 2, 0)[0], "vort", sim.preset,
                                distances_mpc=sim.distances_mpc)
    ref = reference.render_substructure(sim, p)
    assert np.abs(sim.render([p])[0, 0].numpy() - ref).max() <= 1e-5 * ref.max()


@pytest.mark.parametrize("preset", ["lsst-gri", "des-gri"])
def test_lens_matches_lenstronomy_in_every_band(preset):
    """SIE + shear lensing a Sersic source with clumps, Sersic deflector light, Gaussian PSF."""
    sim = LensfindingSimulator(preset, dtype=torch.float64)
    checked = 0
    for index in range(6):
        p = pop.sample_lensfinding(pop.object_rngs(5, "lensfinding", "test", 1, index)[0], True, sim.preset)
        p = dict(p, rings=[], stars=[], points=[], light=p["light"][:2])  # lenstronomy-expressible content
        ours = sim.render([p])["model"][0].numpy()
        for band in range(3):
            ref = reference.render_lens(sim, p, band)
            assert np.abs(ours[band] - ref).max() <= 1e-5 * ref.max()
        checked += len(p["sources"])
    assert checked > 6  # clumps were included
    assert len({round(p["seeing_scale"], 2) for p in [pop.sample_lensfinding(pop.object_rngs(5, "lensfinding", "test", 1, i)[0],
                                                                           True, sim.preset) for i in range(6)]}) > 1


def test_float32_engine_is_close_to_float64():
    sim64 = SubstructureSimulator("deeplense-model-iii", dtype=torch.float64)
    sim32 = SubstructureSimulator("deeplense-model-iii")
    p = pop.sample_substructure(pop.object_rngs(2, "substructure", "test", 1, 0)[0], "sphere", sim64.preset,
                                distances_mpc=sim64.distances_mpc)
    a, b = sim64.render([p]).numpy(), sim32.render([p]).numpy()
    assert np.abs(a - b).max() <= 1e-4 * a.max()
