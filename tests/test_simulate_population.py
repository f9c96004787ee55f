"""Lens-finding population (spec section 2) and the streaming dataset."""

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lensfinder.simulate import StreamingDataset
from lensfinder.simulate import population as pop
from lensfinder.simulate.engine import LensfindingSimulator
from lensfinder.simulate.presets import load_preset


def _sample(n, is_lens, seed=0):
    cfg = load_preset("lsst-gri")
    return [pop.sample_lensfinding(pop.object_rngs(seed, "lensfinding", "train", int(is_lens), i)[0], is_lens, cfg)
            for i in range(n)]


def test_nonlens_mix_neighbours_and_stars():
    params = _sample(2000, False)
    kinds = np.array([p["deflector_type"] for p in params])
    assert abs((kinds == "elliptical").mean() - 0.50) < 0.04
    assert abs((kinds == "disk").mean() - 0.35) < 0.04
    assert abs((kinds == "confuser").mean() - 0.15) < 0.03
    confusers = {p["confuser_kind"] for p in params if p["deflector_type"] == "confuser"}
    assert confusers == {"merger", "ring", "tidal_arc", "blue_companion"}
    assert {p["n_neighbours"] for p in params} == {0, 1, 2, 3}
    assert {p["n_stars"] for p in params} == {0, 1, 2}
    assert all(17 <= p["deflector_mag_i"] <= 21 and p["theta_e_arcsec"] == 0 and not p["sources"] for p in params)


def test_lens_population():
    params = _sample(1500, True)
    kinds = np.array([p["deflector_type"] for p in params])
    assert abs((kinds == "elliptical").mean() - 0.90) < 0.03 and set(kinds) == {"elliptical", "disk"}
    theta = np.array([p["theta_e_arcsec"] for p in params])
    assert theta.min() >= 0.5 and theta.max() <= 2.5
    from scipy import stats
    assert stats.kstest(np.log(theta), stats.uniform(np.log(0.5), np.log(5.0)).cdf).pvalue > 0.01
    assert (theta < 0.71).any()  # some Einstein radii are below the i-band seeing
    mags = np.array([p["source_mag_i"] for p in params])
    assert mags.min() >= 21 and mags.max() <= 25.5 and stats.kstest(mags, stats.uniform(21, 4.5).cdf).pvalue > 0.01
    assert all(p["source_offset_theta_e"] <= 0.6 for p in params)
    assert {p["n_clumps"] for p in params} == {0, 1, 2, 3}
    gamma = np.hypot([p["shear_gamma1"] for p in params], [p["shear_gamma2"] for p in params])
    assert gamma.max() <= 0.1


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


def test_noise_follows_the_preset():
    sim = LensfindingSimulator("lsst-gri")
    blank = np.zeros((3, 64, 64))
    noise = sim.add_noise(blank, np.random.default_rng(0))
    np.testing.assert_allclose(noise.std(axis=(1, 2)), sim.bkg_sigma_cps / sim.cps_per_nmgy, rtol=0.05)
    des = LensfindingSimulator("des-gri")
    assert (des.bkg_sigma_cps / des.cps_per_nmgy > sim.bkg_sigma_cps / sim.cps_per_nmgy).all()  # DES is shallower


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
