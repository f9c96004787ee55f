"""Training from labelled cubes (HDF5, Zarr, a folder of shards): one epoch trains and writes the history a folder
layout writes; a bad label column is refused by name; an epoch reads each block once, in a shuffled block order with
rows shuffled within windows, never the whole cube; DDP ranks take equal shares of one draw."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from conftest import lensfinding_image
from lensfinder.cli import app
from lensfinder.config import TrainConfig
from lensfinder.data.cubes import BLOCK_ROWS, CubeEpochs, LabelledCubes, epoch_order, is_cube_data
from lensfinder.data.datamodule import EpochSampler
from lensfinder.train.history import HISTORY_COLUMNS
from lensfinder.train.run import load_model, train
from lensfinder.validation import InputError

SIZE = 16


def labelled(n_lenses: int, n_nonlenses: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.r_[np.ones(n_lenses, np.int64), np.zeros(n_nonlenses, np.int64)])
    images = np.stack([lensfinding_image(bool(y), SIZE, rng) for y in labels])
    return images, labels


def write_h5(path, images, labels, *, split=None, **attrs):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images, chunks=(8, *images.shape[1:]))
        handle["id"] = np.array([f"obj{i:05d}" for i in range(len(images))], dtype=h5py.string_dtype())
        handle["label"] = labels
        if split is not None:
            handle["split"] = np.array(split, dtype=h5py.string_dtype())
        for key, value in attrs.items():
            handle.attrs[key] = value
    return path


def write_zarr(path, images, labels, **attrs):
    group = zarr.open_group(str(path), mode="w")
    group.create_array("images", shape=images.shape, chunks=(16, *images.shape[1:]), dtype="float32")[:] = images
    group.create_array("id", shape=(len(images),), chunks=(64,), dtype=str)[:] = np.array(
        [f"z{i}" for i in range(len(images))])
    group.create_array("label", shape=(len(images),), chunks=(64,), dtype="int64")[:] = labels
    group.attrs.update(attrs)
    return path


def _config(data, out, **extra):
    return TrainConfig(task="lensfinding", data=str(data), out=str(out), model="report-cnn3", epochs=1, batch_size=8,
                       progress=False, **extra)


def test_a_labelled_cube_trains_one_epoch_with_the_history_of_a_folder(tmp_path):
    images, labels = labelled(12, 36)
    split = ["val" if i % 4 == 0 else "train" for i in range(48)]
    cube = write_h5(tmp_path / "train.h5", images, labels, split=split, class_names=["nonlens", "lens"],
                    preset="lsst-gri", pixel_scale_arcsec=0.2)
    assert is_cube_data(cube) and not is_cube_data(tmp_path / "nothing")
    run = train(_config(cube, tmp_path / "run", sampling="balanced"))
    with open(run.path / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == HISTORY_COLUMNS and [r["epoch"] for r in rows] == ["1"]
    assert all(rows[0][key] != "" for key in HISTORY_COLUMNS)
    model = load_model(run.path)
    assert model.hparams.preset == "lsst-gri" and model.hparams.class_names == ["nonlens", "lens"]
    assert (model.hparams.in_channels, model.hparams.image_size) == (3, SIZE)
    assert (run.path / "thresholds.json").is_file() and (run.path / "calibration.json").is_file()
    assert not (run.path / "split.json").exists()  # the split column says which rows validate
    assert not list(tmp_path.glob("**/.lensfinder_cache")) and not list(tmp_path.glob("**/*.npy"))  # nothing packed


def test_a_folder_of_zarr_shards_without_a_split_holds_out_a_seeded_validation_share(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(2):
        images, labels = labelled(8, 24, seed=k)
        write_zarr(folder / f"shard{k}.zarr", images, labels)
    cubes = LabelledCubes(folder, "lensfinding")
    assert len(cubes) == 64 and cubes.class_names == ["nonlens", "lens"]
    run = train(_config(folder, tmp_path / "run", num_workers=1))
    record = json.loads((run.path / "split.json").read_text())
    assert record["val_fraction"] == 0.1 and len(record["val_rows"]) == 7  # 10 % of each class: 2 of 16 + 5 of 48
    assert record["shards"] == [str(folder / "shard0.zarr"), str(folder / "shard1.zarr")]
    with open(run.path / "history.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1"]


@pytest.mark.parametrize("label, attrs, message", [
    (np.linspace(0, 1, 20), {}, r"'label' holds float64 values; expected integer class indices 0..1"),
    (np.r_[np.zeros(19, int), 2], {}, r"'label' of row 19 is 2, outside 0..1"),
    (np.zeros(19, int), {}, r"'label' has shape \(19,\), expected \(20,\)"),
    (np.r_[np.zeros(10, int), np.ones(10, int)], {"class_names": ["lens", "nonlens"]},
     r"lens finding needs \['nonlens', 'lens'\]"),
    (np.zeros(20, int), {}, r"the train split holds no lens cutout"),
    (None, {}, r"no 'label' array; a labelled cube holds 'label' \(20,\)"),
])
def test_a_bad_label_column_is_refused_with_a_clear_message(tmp_path, label, attrs, message):
    images, _ = labelled(5, 15)
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = images
        handle["id"] = np.arange(20)
        if label is not None:
            handle["label"] = label
        handle.attrs.update(attrs)
    result = CliRunner().invoke(app, ["train", "--task", "lensfinding", "--data", str(path), "--out",
                                      str(tmp_path / "run"), "--no-progress"])
    assert isinstance(result.exception, InputError), result.output
    assert str(path) in str(result.exception)
    assert __import__("re").search(message, str(result.exception)), str(result.exception)
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything is written


def test_a_bad_split_value_or_pixel_is_refused_by_name(tmp_path):
    images, labels = labelled(6, 18)
    cube = write_h5(tmp_path / "c.h5", images, labels, split=["train"] * 23 + ["holdout"])
    with pytest.raises(InputError, match="'split' holds 'holdout'; expected train, val"):
        LabelledCubes(cube, "lensfinding")
    images[5, 1, 2, 3] = np.nan
    cube = write_h5(tmp_path / "nan.h5", images, labels)
    cubes = LabelledCubes(cube, "lensfinding")
    with pytest.raises(InputError, match="nan.h5: row 5 holds NaN or infinite pixels"):
        cubes.rows(np.arange(24))[0:8]


def _cube_rows(tmp_path, n=200, block_rows=16):
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 4, 4), np.float32)
    labels = (np.arange(n) % 5 == 0).astype(np.int64)
    cube = write_h5(tmp_path / "rows.h5", images, labels)
    cubes = LabelledCubes(cube, "lensfinding")
    from lensfinder.data.cubes import CubeRows

    return CubeRows(cubes, np.arange(n), block_rows=block_rows), labels


def test_an_epoch_reads_each_block_once_in_a_shuffled_order(tmp_path):
    rows, labels = _cube_rows(tmp_path)
    order = epoch_order(rows, mode="shuffle", seed=3, epoch=0, window_blocks=2)
    assert sorted(order) == list(range(200))  # each row once
    again = epoch_order(rows, mode="shuffle", seed=3, epoch=0, window_blocks=2)
    assert np.array_equal(order, again) and not np.array_equal(order, epoch_order(rows, mode="shuffle", seed=3,
                                                                                     epoch=1, window_blocks=2))
    assert not np.array_equal(order, np.sort(order))
    blocks = rows.blocks[order]
    for start in range(0, 200, 32):  # a window of 2 blocks x 16 rows touches at most 3 blocks
        assert len(set(blocks[start:start + 32])) <= 3
    assert len(set(blocks[:16])) >= 2  # rows of one block are mixed with another's
    # balanced sampling: the same draws as the folder path's sampler, only reordered by block
    sampler = EpochSampler(labels, mode="balanced", seed=3)
    sampler.set_epoch(2)
    balanced = epoch_order(rows, mode="balanced", seed=3, epoch=2)
    assert sorted(balanced) == sorted(sampler.indices().tolist())

    stream = CubeEpochs(rows, batch_size=10, mode="shuffle", seed=3).for_epoch(0)
    seen = []
    for images, batch_labels in stream:
        assert images.shape == (10, 3, 4, 4) and images.dtype == torch.float32
        seen += images[:, 0, 0, 0].long().tolist()  # each image is filled with its row number
        np.testing.assert_array_equal(batch_labels.numpy(), labels[images[:, 0, 0, 0].long().numpy()])
    assert sorted(seen) == list(range(200)) and len(stream) == 20
    assert rows.reads <= 200 // 16 + 1 + 2  # each block read once (a window's edge may read one again)
    assert len(rows._cache) <= rows.cache_blocks


def test_ddp_ranks_take_equal_shares_of_one_draw(tmp_path):
    rows, _ = _cube_rows(tmp_path, n=101)
    epochs = CubeEpochs(rows, batch_size=8, mode="shuffle", seed=0)
    shares = [epochs.for_epoch(4, rank, 2) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 7 and len(shares[0].order) == len(shares[1].order) == 51
    assert set(shares[0].order) | set(shares[1].order) == set(range(101))
    assert BLOCK_ROWS == 256


def test_cutouts_copies_a_catalogues_label_and_split_into_a_labelled_cube(tmp_path):
    from test_survey import tile_wcs, write_tile

    wcs = tile_wcs()
    write_tile(tmp_path, "A", wcs, np.random.default_rng(0))
    pixels = [(20 + 6 * i, 20 + 5 * (i % 10)) for i in range(12)] + [(400, 50)]  # the last lies on no tile
    ra, dec = wcs.pixel_to_world_values(*np.array(pixels, float).T)
    labels = [i % 3 == 0 for i in range(13)]
    with open(tmp_path / "objects.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "ra", "dec", "Label", "split"])
        writer.writerows((f"o{i}", repr(float(r)), repr(float(d)), int(y), "val" if i in (0, 1, 2, 4) else "train")
                         for i, (r, d, y) in enumerate(zip(ra, dec, labels)))
    out = tmp_path / "labelled.zarr"
    result = CliRunner().invoke(app, ["cutouts", *map(str, sorted(tmp_path.glob("A_*.fits"))), "--catalogue",
                                      str(tmp_path / "objects.csv"), "--bands", "g,r,i", "--out", str(out), "--size",
                                      "16", "--preset", "lsst-gri", "--class-names", "nonlens,lens"])
    assert result.exit_code == 0, result.output
    cubes = LabelledCubes(out, "lensfinding")
    assert len(cubes) == 12 and cubes.preset == "lsst-gri" and cubes.class_names == ["nonlens", "lens"]
    assert cubes.labels.tolist() == [int(y) for y in labels[:12]]
    held = cubes.held_out(val_fraction=0.1, seed=0)
    assert held["val"].tolist() == [0, 1, 2, 4] and not cubes.seeded  # the split column, not a seeded share
    with open(tmp_path / "bad.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "ra", "dec", "label"], ["a", repr(float(ra[0])), repr(float(dec[0])), "0.5"]])
    with pytest.raises(InputError, match="bad.csv: column 'label' holds float64 values"):
        from lensfinder.survey.engine import make_cutouts

        make_cutouts(sorted(tmp_path.glob("A_*.fits")), tmp_path / "bad.csv", tmp_path / "bad.h5", bands=["g", "r", "i"],
                     size=16)
