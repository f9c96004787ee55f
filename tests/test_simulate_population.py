"""Lens-finding population (spec section 2) and the streaming dataset."""

import copy
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lensfinder.simulate import StreamingDataset
from lensfinder.simulate import population as pop
from lensfinder.simulate.engine import LensfindingSimulator
from lensfinder.simulate.presets import load_preset


def _sample(n, is_lens, seed=0, cfg=None):
    cfg = cfg or load_preset("lsst-gri")
    return [pop.sample_lensfinding(pop.object_rngs(seed, "lensfinding", "train", int(is_lens), i)[0], is_lens, cfg)
            for i in range(n)]


def _only(family: str, cfg=None) -> dict:
    """A preset whose non-lenses are all `family`, without artefacts."""
    cfg = pop.select_confusers(copy.deepcopy(cfg or load_preset("lsst-gri")), [family])
    cfg["nonlens_mix"] = {"confuser": 1.0}
    cfg["artefacts"] = {}
    return cfg


def test_nonlens_mix_follows_the_preset_and_every_family_appears_on_both_hosts():
    cfg = load_preset("lsst-gri")
    params = _sample(3000, False)
    confuser = np.array([p["confuser_kind"] != "" for p in params])
    assert abs(confuser.mean() - cfg["nonlens_mix"]["confuser"]) < 0.03
    kinds = np.array([p["deflector_type"] for p in params])[~confuser]
    share = cfg["nonlens_mix"]["elliptical"] / (cfg["nonlens_mix"]["elliptical"] + cfg["nonlens_mix"]["disk"])
    assert abs((kinds == "elliptical").mean() - share) < 0.04
    hosts = {}
    for p in params:
        if p["confuser_kind"]:
            hosts.setdefault(p["confuser_kind"], set()).add(p["deflector_type"])
    assert set(hosts) == set(cfg["confusers"])  # every confuser family is drawn
    for family, seen in hosts.items():  # and on both kinds of host: no "ring => disk host" shortcut
        assert seen == {"elliptical", "disk"}, family
    assert {p["n_neighbours"] for p in params} == set(range(cfg["neighbours"]["max"] + 1))
    assert {p["n_stars"] for p in params} == set(range(cfg["stars"]["max"] + 1))
    lo, hi = cfg["central_mag_i"]
    assert all(lo <= p["deflector_mag_i"] <= hi and p["theta_e_arcsec"] == 0 and not p["sources"] for p in params)


def _within(values, bounds, *, span=0.5):
    """Every value inside bounds, and the draws cover at least `span` of the range (so a range that is
    ignored, or replaced by a constant, fails)."""
    values = np.asarray(values, dtype=float)
    lo, hi = bounds
    assert values.min() >= lo - 1e-9 and values.max() <= hi + 1e-9, (values.min(), values.max(), bounds)
    if hi > lo:
        assert values.max() - values.min() >= span * (hi - lo), (values.min(), values.max(), bounds)


@pytest.mark.parametrize("family", ["resonance_ring", "shells", "spiral_arms", "tidal_stream"])
def test_ring_families_use_their_own_numbers(family):
    cfg = _only(family)
    spec = cfg["confusers"][family]["components"][0]
    params = _sample(200, False, cfg=cfg)
    rings = [r for p in params for r in p["rings"]]
    _within([r["radius"] for r in rings], spec["radius_arcsec"])
    _within([r["width"] for r in rings], spec["width_arcsec"])
    _within([r["q"] for r in rings], spec["q"])
    if "arc_half_rad" in spec:
        _within([r["arc_half_width"] for r in rings], spec["arc_half_rad"])
    else:
        assert all(np.isinf(r["arc_half_width"]) for r in rings)
    per_object = [len(p["rings"]) // (2 if spec.get("mirror") else 1) for p in params]
    _within(per_object, spec["count"], span=1.0 if spec["count"][1] > spec["count"][0] else 0)
    # move the family's numbers in the preset: the draws move with them
    moved = copy.deepcopy(cfg)
    moved["confusers"][family]["components"][0]["radius_arcsec"] = [3.0, 3.2]
    rings = [r for p in _sample(50, False, cfg=moved) for r in p["rings"]]
    _within([r["radius"] for r in rings], [3.0, 3.2])


@pytest.mark.parametrize("family", ["merger", "blue_companion", "quad_like", "compact_group"])
def test_companion_families_use_their_own_numbers(family):
    cfg = _only(family)
    spec = cfg["confusers"][family]["components"][0]
    params = _sample(200, False, cfg=cfg)
    comps = []  # the family's companions: the slots right after the host's own (1 for ellipticals, 2 for disks)
    for p in params:
        host = 2 if p["deflector_type"] == "disk" else 1
        comps += [(p, s) for s in p["light"][host:host + spec["count"][0]]]
    _within([np.hypot(s["x"] - p["deflector_x_arcsec"], s["y"] - p["deflector_y_arcsec"]) for p, s in comps],
            spec["separation_arcsec"])
    _within([s["r_eff"] for _, s in comps], spec["r_eff_arcsec"])
    _within([s["n"] for _, s in comps], spec["n"])


def test_dust_lane_removes_light_along_an_edge_on_host():
    cfg = _only("edge_on_dust")
    spec = cfg["confusers"]["edge_on_dust"]["components"][0]
    for p in _sample(100, False, cfg=cfg):
        host = 2 if p["deflector_type"] == "disk" else 1
        lane = p["light"][host]
        assert (lane["amp"] < 0).all() and spec["q"][0] <= lane["q"] <= spec["q"][1]
        if p["deflector_type"] == "disk":
            assert p["deflector_q"] <= cfg["disk"]["edge_on_q"][1]  # dusty disks are drawn edge-on


def test_select_confusers_leaves_families_out_and_refuses_unknown_names():
    cfg = load_preset("lsst-gri")
    families = pop.confuser_families(cfg)
    assert families[-len(cfg["artefacts"]):] == list(cfg["artefacts"])  # artefact kinds are families too
    without = pop.select_confusers(cfg, ["all", "-shells", "-bright_star"])
    assert pop.confuser_families(without) == [f for f in families if f not in ("shells", "bright_star")]
    assert pop.confuser_families(pop.select_confusers(cfg, ["-shells", "-bright_star"])) == pop.confuser_families(without)
    assert pop.confuser_families(pop.select_confusers(cfg, ["chain", "merger"])) == ["merger", "chain"]
    params = _sample(1500, False, cfg=without)
    kinds = {p["confuser_kind"] for p in params}
    assert "shells" not in kinds and len(kinds) == len(cfg["confusers"])  # '' (no confuser) plus the other families
    assert not any("bright_star" in p["artefact_kinds"] for p in params)
    assert any("cosmic_ray" in p["artefact_kinds"] for p in params)
    with pytest.raises(ValueError, match="unknown confuser family shell; known: resonance_ring"):
        pop.select_confusers(cfg, ["shell"])


def test_lens_population():
    cfg = load_preset("lsst-gri")
    params = _sample(3000, True)
    kinds = np.array([p["deflector_type"] for p in params])
    for kind, share in cfg["lens_deflector_mix"].items():
        assert abs((kinds == kind).mean() - share) < 0.03, kind
    theta = np.array([p["theta_e_arcsec"] for p in params])
    group = kinds == "group"
    _within(theta[~group], cfg["theta_e_arcsec"])
    _within(theta[group], cfg["group"]["theta_e_arcsec"])
    from scipy import stats
    lo, hi = np.log(cfg["theta_e_arcsec"])
    assert stats.kstest(np.log(theta[~group]), stats.uniform(lo, hi - lo).cdf).pvalue > 0.01  # log-uniform
    quasar = np.array([p["source_kind"] == "quasar" for p in params])
    assert abs(quasar.mean() - cfg["quasar"]["fraction"]) < 0.02
    images = np.array([p["n_images"] for p in params])[quasar]
    assert set(images) <= {2, 3, 4, 5} and (images == 2).any() and (images == 4).any()  # doubles and quads
    galaxy = ~quasar
    mags = np.array([p["source_mag_i"] for p in params])[galaxy]
    _within(mags, cfg["source"]["mag_i"], span=0.9)
    assert all(p["source_offset_theta_e"] <= cfg["source"]["max_offset_theta_e"] for p, g in zip(params, galaxy) if g)
    gamma = np.hypot([p["shear_gamma1"] for p in params], [p["shear_gamma2"] for p in params])
    assert gamma.max() <= cfg["shear_max"]


def test_point_images_of_a_singular_isothermal_sphere():
    """SIS (q = 1, no shear): images on the source's line at beta + theta_E and beta - theta_E, with
    magnifications |theta| / (|theta| - theta_E)."""
    from lensfinder.simulate import render

    theta_e, beta = 1.3, 0.4
    x, y, mu = render.point_images(beta_x=beta, beta_y=0.0, x0=0.0, y0=0.0, q=0.99999, phi=0.0, theta_e=theta_e,
                                   gamma1=0.0, gamma2=0.0)
    np.testing.assert_allclose(np.sort(x), [beta - theta_e, beta + theta_e], atol=1e-4)
    np.testing.assert_allclose(y, 0.0, atol=1e-4)
    expected = {round(beta + theta_e, 3): (beta + theta_e) / beta, round(beta - theta_e, 3): (theta_e - beta) / -beta}
    for xi, mi in zip(x, mu):
        assert mi == pytest.approx(expected[round(xi, 3)], rel=1e-3)


def _auc(neg, pos):
    ranks = np.argsort(np.argsort(np.concatenate([neg, pos]))) + 1
    return (ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos))


def test_total_flux_does_not_separate_lenses_from_nonlenses():
    sim = LensfindingSimulator("lsst-gri")
    flux = {}
    for is_lens in (False, True):
        params = _sample(150, is_lens, seed=7)
        flux[is_lens] = sim.render(params)["model"].sum(dim=(1, 2, 3)).numpy()
    auc = _auc(flux[False], flux[True])
    assert 0.3 < auc < 0.7, auc


def _blank(sim, **observing):
    model = torch.zeros((40, 3, 64, 64))
    params = [dict(observing, artefacts=[]) for _ in range(40)]
    rngs = [np.random.default_rng(i) for i in range(40)]
    images, _ = sim.noisy_batch(model, None, np.zeros(40, bool), rngs, params)
    return images


def test_written_noise_follows_the_preset_and_each_objects_depth_and_sky():
    """The noise the writer applies (engine.noisy_batch): per-pixel sigma of a blank model equals the
    preset's sky + read noise, computed here from the preset's numbers with lenstronomy's formula."""
    import math

    cfg = load_preset("lsst-gri")
    sim = LensfindingSimulator(cfg)
    expected = []
    for b in cfg["bands"].values():
        t = b["exposure_time_s"] * b["num_exposures"]
        sky_cps = 10 ** (-0.4 * (b["sky_brightness_mag"] - b["magnitude_zero_point"])) * cfg["pixel_scale_arcsec"] ** 2
        sigma_cps = math.sqrt(b["num_exposures"] * cfg["read_noise_e"] ** 2 + t * sky_cps) / t
        expected.append(sigma_cps / 10 ** (0.4 * (b["magnitude_zero_point"] - 22.5)))
    n = 40 * 64 * 64  # draws per band: the sample std is within a few 1/sqrt(2n) of the truth
    std = _blank(sim).std(axis=(0, 2, 3))
    np.testing.assert_allclose(std, expected, rtol=5 / np.sqrt(2 * n))
    deeper = _blank(sim, depth_mag=0.5).std(axis=(0, 2, 3))
    darker = _blank(sim, sky_mag=0.5).std(axis=(0, 2, 3))
    assert (deeper < 0.9 * std).all() and (darker < 0.95 * std).all()
    des = LensfindingSimulator("des-gri")
    assert (_blank(des).std(axis=(0, 2, 3)) > std).all()  # DES is shallower


def test_seeing_scale_widens_the_psf():
    sim = LensfindingSimulator("lsst-gri")
    star = {"x": 0.0, "y": 0.0, "flux": np.array([100.0, 100.0, 100.0])}
    base = dict(light=[], rings=[], sources=[], stars=[star], points=[])
    out = sim.render([dict(base, seeing_scale=1.0), dict(base, seeing_scale=1.3)])["model"].numpy()
    axis = sim.axis
    width = [np.sqrt((img[2] * axis[None, :] ** 2).sum() / img[2].sum()) for img in out]
    assert width[1] / width[0] == pytest.approx(1.3, rel=0.02)
    expected = sim.seeing_fwhm_arcsec[2] * 0.4246609  # FWHM -> sigma
    assert width[0] == pytest.approx(expected, rel=0.03)


def test_artefacts_are_drawn_as_specified():
    from lensfinder.simulate import artefacts

    sky = np.array([1.0, 2.0, 3.0])
    psf = np.array([0.3, 0.3, 0.3])
    blank = np.zeros((3, 64, 64), np.float32)

    def draw(art):
        return artefacts.apply(blank, [art], sky_sigma_nmgy=sky, psf_sigma_arcsec=psf, pixel_scale_arcsec=0.2)

    cr = draw({"kind": "cosmic_ray", "band": 1, "x": 0.0, "y": 0.0, "length_pix": 4.0, "angle": 0.0,
               "amplitude_sigma": 100.0})
    assert cr[0].max() == 0 and cr[2].max() == 0 and cr[1].max() == pytest.approx(200.0)
    assert 3 <= (cr[1] > 0).sum() <= 6  # a few sharp pixels, not PSF-smoothed
    trail = draw({"kind": "satellite_trail", "band": -1, "offset": 0.0, "angle": 0.0, "width_pix": 1.0,
                  "amplitude_sigma": 10.0})
    assert (trail[:, 31:33, :].max(axis=1) > 5 * sky[:, None]).all()  # crosses the whole cutout, every band
    bad = draw({"kind": "bad_pixels", "band": 0, "columns": [0.0], "block": False, "block_xy": [0, 0], "block_size": 1})
    assert bad.sum() == 0
    star = draw({"kind": "bright_star", "x": 0.0, "y": 0.0, "flux": np.array([1e6, 1e6, 1e6]), "spike_fraction": 0.02,
                 "spike_width_pix": 0.7, "spike_angle": 0.0, "saturation_sigma": 1000.0})
    np.testing.assert_allclose(star.max(axis=(1, 2)), 1000.0 * sky)  # flat, saturated top
    assert star[0, 32, 60] > 10 * star[0, 45, 60]  # a diffraction spike along the x axis
    resid = draw({"kind": "sky_residual", "x": 0.0, "y": 0.0, "amplitude_sigma": -2.0, "scale_arcsec": 3.0})
    assert resid.min() == pytest.approx(-2.0 * sky[2], rel=0.02)


# ----------------------------------------------------------------------------- streaming
def _take(ds, n):
    return list(itertools.islice(iter(ds), n))


def test_stream_shapes_labels_and_determinism():
    ds = StreamingDataset("substructure", preset="deeplense-model-iii", seed=3, batch_size=4)
    items = _take(ds, 6)
    assert [y for _, y in items] == [0, 1, 2, 0, 1, 2]
    assert all(x.dtype == torch.float32 and x.shape == (1, 64, 64) for x, _ in items)
    again = _take(StreamingDataset("substructure", preset="deeplense-model-iii", seed=3, batch_size=3), 6)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(items, again))
    other = _take(StreamingDataset("substructure", preset="deeplense-model-iii", seed=4, batch_size=4), 6)
    assert not torch.equal(items[0][0], other[0][0])


def test_lensfinding_stream_balance():
    ds = StreamingDataset("lensfinding", preset="lsst-gri", seed=0, batch_size=32, lens_fraction=0.25)
    items = _take(ds, 64)
    assert all(x.shape == (3, 64, 64) for x, _ in items)
    labels = np.array([y for _, y in items])
    assert set(labels) == {0, 1} and 0.1 < labels.mean() < 0.45
    with pytest.raises(ValueError, match="lens_fraction"):
        StreamingDataset("lensfinding", preset="lsst-gri", lens_fraction=1.5)
    with pytest.raises(ValueError, match="known presets"):
        StreamingDataset("lensfinding", preset="lsst")


def test_stream_workers_get_disjoint_streams():
    ds = StreamingDataset("substructure", preset="deeplense-model-iii", seed=1, batch_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    items = list(itertools.islice(iter(loader), 8))  # alternates between the two workers
    images = [x for x, _ in items]
    worker0, worker1 = images[0::2], images[1::2]
    assert all(not torch.equal(a, b) for a in worker0 for b in worker1)
    single = _take(ds, 4)  # worker 0 of a DataLoader = the stream without workers
    assert all(torch.equal(a, b) for a, (b, _) in zip(worker0, single))
