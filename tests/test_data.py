import os

import numpy as np
import pytest

from conftest import make_lensfinding_layout, make_substructure_layout
from lensfinder.data.cache import open_packed, pack
from lensfinder.data.layouts import atomic_path, discover, stratified_split, train_val_listings, write_split_record
from lensfinder.data.normalize import Normalizer, channel_stats
from lensfinder.data.transforms import d4_transform, random_d4
from lensfinder.validation import InputError, as_chw, load_npy


def test_substructure_layout_classes_in_default_order(tmp_path):
    root = make_substructure_layout(tmp_path / "d", per_class={"train": 3, "test": 2}, shape="hw")
    splits = discover(root, "substructure")
    assert set(splits) == {"train", "test"}
    assert splits["train"].class_names == ["no", "sphere", "vort"]
    assert splits["train"].class_counts().tolist() == [3, 3, 3]
    assert splits["train"].paths[3].parent.name == "sphere" and splits["train"].labels[3] == 1


def test_lensfinding_layout(tmp_path):
    root = make_lensfinding_layout(tmp_path / "d", counts={"train_lenses": 2, "train_nonlenses": 5, "test_lenses": 1, "test_nonlenses": 4})
    splits = discover(root, "lensfinding")
    assert splits["train"].class_names == ["nonlens", "lens"]
    assert splits["train"].class_counts().tolist() == [5, 2]
    assert splits["test"].class_counts().tolist() == [4, 1]


def test_empty_class_folder_is_named(tmp_path):
    root = make_substructure_layout(tmp_path / "d", per_class={"train": 2})
    for f in (root / "train" / "vort").iterdir():
        f.unlink()
    with pytest.raises(InputError, match=r"train/vort: no \.npy files"):
        discover(root, "substructure")


def test_missing_layout_is_explained(tmp_path):
    (tmp_path / "d" / "stuff").mkdir(parents=True)
    with pytest.raises(InputError, match="train_lenses"):
        discover(tmp_path / "d", "lensfinding")
    with pytest.raises(InputError, match="not found"):
        discover(tmp_path / "nowhere", "substructure")
    with pytest.raises(InputError, match="unknown task"):
        discover(tmp_path / "d", "detection")


def test_stratified_split_is_reproducible_and_balanced():
    labels = np.r_[np.zeros(170, int), np.ones(30, int)]
    train_a, val_a = stratified_split(labels, val_fraction=0.1, seed=7)
    train_b, val_b = stratified_split(labels, val_fraction=0.1, seed=7)
    _, val_c = stratified_split(labels, val_fraction=0.1, seed=8)
    np.testing.assert_array_equal(val_a, val_b)
    assert not np.array_equal(val_a, val_c)
    assert np.bincount(labels[val_a]).tolist() == [17, 3]
    assert len(np.intersect1d(train_a, val_a)) == 0 and len(train_a) + len(val_a) == 200


def test_split_is_recorded(tmp_path, lensfinding_root):
    splits = discover(lensfinding_root, "lensfinding")
    train, val = train_val_listings(splits, val_fraction=0.1, seed=0)
    write_split_record(tmp_path / "split.json", val, seed=0, val_fraction=0.1)
    import json

    record = json.loads((tmp_path / "split.json").read_text())
    assert len(record["val_files"]) == len(val) == 10
    assert record["val_files"][0].startswith("train_")


@pytest.mark.parametrize("array, expected", [
    (np.array([[1.5, -2.0], [0.0, 3.0]]), [[[1.5, -2.0], [0.0, 3.0]]]),
    (np.array([[[7.0, 8.0], [9.0, 10.0]]]), [[[7.0, 8.0], [9.0, 10.0]]]),
    (np.array([[[1, 2], [3, 4]], [[-5, 6], [7, 8]]], np.int16), [[[1, 2], [3, 4]], [[-5, 6], [7, 8]]]),
    (np.array([0.0, 1.0, 2.0, 3.0]), [[[0.0, 1.0], [2.0, 3.0]]]),  # a flat square vector, row by row
    (np.array([[255, 0]], np.uint8), [[[255.0, 0.0]]]),
])
def test_accepted_shapes(array, expected):
    out = as_chw(array, "x.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


def test_object_array_of_rows_and_axion_variant(tmp_path):
    rows = np.empty(4, dtype=object)
    for i in range(4):
        rows[i] = np.arange(4.0) + i
    np.testing.assert_array_equal(as_chw(rows, "rows.npy"), [[[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]])
    axion = np.empty(2, dtype=object)
    axion[0], axion[1] = np.ones((6, 6)), 3e-23
    path = tmp_path / "vort_0.npy"
    np.save(path, axion, allow_pickle=True)
    with pytest.raises(InputError, match=r"vort_0\.npy.*--allow-pickle"):
        load_npy(path)
    np.testing.assert_array_equal(as_chw(load_npy(path, allow_pickle=True), path), np.ones((1, 6, 6)))  # m_a dropped


@pytest.mark.parametrize("array, message", [
    (np.ones((2, 3, 4, 4)), "found shape"),
    (np.ones(10), "square number"),
    (np.ones((64, 64, 3)), "channels last"),
    (np.array([[np.nan, 1.0], [1.0, np.inf]]), "2 pixel"),
    (np.array([["a", "b"]]), "numeric"),
    (np.ones((3, 0, 8)), r"empty shape \(3, 0, 8\)"),
    (np.array([[1e39, 1.0]]), "1 pixel.*exceed the float32 range"),
])
def test_refused_arrays_name_the_file(array, message):
    with pytest.raises(InputError, match=message) as info:
        as_chw(array, "bad/x.npy")
    assert "bad/x.npy" in str(info.value)


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((16, 16)))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all")
    for path in (truncated, garbage):
        with pytest.raises(InputError, match=path.name):
            load_npy(path)


def test_pack_is_cached_and_invalidated(tmp_path, substructure_root):
    listing = discover(substructure_root, "substructure")["test"]
    first = pack(listing, cache_dir=tmp_path / "c")
    stamp = first.stat().st_mtime_ns
    assert pack(listing, cache_dir=tmp_path / "c") == first and first.stat().st_mtime_ns == stamp
    images = open_packed(first)
    assert images.shape == (30, 1, 32, 32)
    np.testing.assert_array_equal(images[0], np.load(listing.paths[0]))
    np.save(listing.paths[0], np.zeros((1, 32, 32), np.float32))
    os.utime(listing.paths[0], ns=(stamp + 10**9, stamp + 10**9))
    second = pack(listing, cache_dir=tmp_path / "c")
    assert second != first and not open_packed(second)[0].any()


def test_pack_refuses_mixed_shapes_and_leaves_no_partial_file(tmp_path, substructure_root):
    listing = discover(substructure_root, "substructure")["test"]
    np.save(listing.paths[5], np.ones((1, 16, 16), np.float32))
    with pytest.raises(InputError, match=rf"{listing.paths[5].name}: expected shape \(1, 32, 32\)"):
        pack(listing, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_pack_refuses_nan_pixels(tmp_path, substructure_root):
    listing = discover(substructure_root, "substructure")["test"]
    bad = np.ones((1, 32, 32), np.float32)
    bad[0, 3, 3] = np.nan
    np.save(listing.paths[2], bad)
    with pytest.raises(InputError, match=rf"{listing.paths[2].name}: 1 pixel"):
        pack(listing, cache_dir=tmp_path / "c")


def test_channel_stats_and_normalisers():
    import torch

    rng = np.random.default_rng(0)
    images = rng.normal([[[1.0]], [[5.0]]], [[[2.0]], [[0.5]]], size=(200, 2, 8, 8)).astype(np.float32)
    mean, std = channel_stats(images, chunk=37)
    np.testing.assert_allclose(mean, images.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, images.std(axis=(0, 2, 3)), rtol=1e-4)
    x = torch.from_numpy(images[:16])
    z = Normalizer("channel", mean.tolist(), std.tolist())(x)
    assert abs(float(z.mean())) < 0.2
    mm = Normalizer("minmax")(x)
    assert float(mm.amin()) == 0.0 and float(mm.amax()) == pytest.approx(1.0)
    stretched = Normalizer("asinh")(x * 1000)
    assert torch.isfinite(stretched).all() and float(stretched.abs().max()) < 5
    restored = Normalizer.from_state(Normalizer("channel", mean.tolist(), std.tolist()).state())
    torch.testing.assert_close(restored(x), z)
    with pytest.raises(ValueError, match="unknown normalisation"):
        Normalizer("zscore")


def test_asinh_stretch_scales_by_the_noise_not_by_a_bright_star():
    import torch

    gen = torch.Generator().manual_seed(0)
    sky = torch.randn(1, 1, 64, 64, generator=gen) * 0.01
    sky[0, 0, 30:32, 20:44] += 0.05  # a faint arc at 5 sigma
    with_star = sky.clone()
    with_star[0, 0, 5, 5] += 30.0  # a bright star far from the arc
    observed = Normalizer("asinh", peak_floor=1e-6)
    torch.testing.assert_close(observed(with_star)[..., 30:32, 20:44], observed(sky)[..., 30:32, 20:44])
    # the noise-free floor (1e-3 of the peak) would let the star set the scale and flatten the arc
    noise_free = Normalizer("asinh", peak_floor=1e-3)
    assert float(noise_free(with_star)[..., 30:32, 20:44].mean()) < 0.6 * float(noise_free(sky)[..., 30:32, 20:44].mean())
    assert Normalizer.from_state(observed.state()).peak_floor == 1e-6
    assert Normalizer.from_state({"kind": "asinh"}).peak_floor == 1e-3  # states saved before the setting
    with pytest.raises(ValueError, match="peak_floor"):
        Normalizer("asinh", peak_floor=1.5)


def test_d4_group():
    import torch

    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = [d4_transform(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # eight distinct elements
    torch.testing.assert_close(d4_transform(d4_transform(x, 1), 3), x)  # rotations compose
    batch = torch.randn(32, 2, 6, 6)
    out = random_d4(batch, torch.Generator().manual_seed(0))
    for i in range(32):
        assert any(torch.equal(out[i], d4_transform(batch[i], k)) for k in range(8))


def test_balanced_sampler_draws_classes_equally_and_reproducibly():
    from lensfinder.data.datamodule import EpochSampler

    def balanced_sampler(labels, *, seed):
        return EpochSampler(labels, mode="balanced", seed=seed)

    labels = np.array([0] * 170 + [1] * 10)  # 1:17, as the lens-finding training split
    draws = np.array(list(balanced_sampler(labels, seed=3)))
    assert len(draws) == len(labels)
    lens_share = (labels[draws] == 1).mean()
    assert 0.4 < lens_share < 0.6  # shuffling would give 0.056
    assert np.array_equal(draws, np.array(list(balanced_sampler(labels, seed=3))))
    assert not np.array_equal(draws, np.array(list(balanced_sampler(labels, seed=4))))


def test_atomic_path_replaces_only_a_completed_write_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "figures" / "roc.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent  # writers that pick a format by suffix
        tmp.write_bytes(b"torn")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["roc.png"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["roc.png"]


def test_an_interrupted_pack_leaves_no_cache_entry(tmp_path):
    root = make_substructure_layout(tmp_path / "data", per_class={"train": 2})
    bad = sorted((root / "train" / "sphere").glob("*.npy"))[0]
    np.save(bad, np.zeros((1, 8, 8), np.float32))  # another shape: packing stops there
    with pytest.raises(InputError, match=bad.name):
        pack(discover(root, "substructure")["train"], cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
