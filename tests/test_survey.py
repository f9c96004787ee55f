"""Survey scale: cutout cubes (HDF5, Zarr) and FITS tiles + catalogue read pixel for pixel; tile edges flagged or
rejected with the reason; a pixel scale unlike the model's refused; the Parquet parts merged into the ranking the
folder path gives; a SIGKILLed run resumed without rescoring its parts; two DDP processes give one process's catalogue."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from typer.testing import CliRunner

from lensfinder.cli import app
from lensfinder.evaluate.predict import predict_catalog
from lensfinder.survey.engine import make_cutouts, predict_survey
from lensfinder.survey.merge import merge_parts
from lensfinder.survey.sources import CubeSource, TileSource, group_tiles
from lensfinder.train.module import LensModule
from lensfinder.train.run import export_model
from lensfinder.validation import InputError

SIZE = 16
SCALE = 0.2  # arcsec per pixel: the lsst-gri preset's, which the test model was "trained" on
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_model(path, *, tta=True, preset="lsst-gri"):
    torch.manual_seed(0)
    module = LensModule(task="lensfinding", model_name="report-cnn3", in_channels=3, num_classes=2, image_size=SIZE,
                        class_names=["nonlens", "lens"], normalization={"kind": "none"}, class_weights=None, lr=1e-3,
                        weight_decay=0.0, scheduler="plateau", augment=False, tta=tta, preset=preset)
    export_model(module.eval(), path)
    return path


def write_h5(path, images, ids, **extra):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images, chunks=(8, *images.shape[1:]))
        handle["id"] = np.array(ids, dtype=h5py.string_dtype()) if isinstance(ids[0], str) else np.asarray(ids)
        for name, values in extra.items():
            handle[name] = values
    return path


def table_rows(path):
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A model, 600 cutouts in an HDF5 cube, and the catalogue one in-process run makes of them."""
    root = tmp_path_factory.mktemp("survey")
    model = make_model(root / "model.safetensors")
    images = np.random.default_rng(1).random((600, 3, SIZE, SIZE), dtype=np.float32)
    cube = write_h5(root / "cube.h5", images, [f"obj{i:04d}" for i in range(600)], ra=np.linspace(10, 11, 600),
                    dec=np.linspace(-1, 1, 600))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run (OMP_NUM_THREADS=1): small batches' sums depend on threads
    try:
        reference = predict_survey([cube], root / "reference.parquet", run=model, chunk_rows=40, batch_size=40,
                                   accelerator="cpu", devices=1)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "model": model, "cube": cube, "reference": table_rows(reference.merged.path), "images": images}


def test_cubes_in_hdf5_and_zarr_read_by_row_range_as_written(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 3, SIZE, SIZE)).astype(np.float32)
    images[7, 1, 2, 3] = np.nan  # a masked pixel: that row is rejected, naming it, and the rest of the block reads
    ra, dec = rng.uniform(0, 360, 20), rng.uniform(-90, 90, 20)
    h5 = write_h5(tmp_path / "cube.h5", images, list(range(100, 120)), ra=ra, dec=dec)
    group = zarr.open_group(str(tmp_path / "cube.zarr"), mode="w")
    group.create_array("images", shape=images.shape, chunks=(6, 3, SIZE, SIZE), dtype="float32")[:] = images
    group.create_array("id", shape=(20,), chunks=(6,), dtype=str)[:] = np.array([f"z{i}" for i in range(20)])
    group.attrs["pixel_scale_arcsec"] = 0.263
    for path, ids in ((h5, [str(i) for i in range(100, 120)]), (tmp_path / "cube.zarr", [f"z{i}" for i in range(20)])):
        source = CubeSource(path)
        assert (source.n, source.channels, source.size) == (20, 3, SIZE)
        block = source.read(5, 13)  # across the storage chunks
        np.testing.assert_array_equal(block.images[[0, 1, 3, 4, 5, 6, 7]], images[[5, 6, 8, 9, 10, 11, 12]])
        assert list(block.ids) == ids[5:13]
        assert block.reasons[2].startswith("1 pixel(s) are NaN") and not any(block.reasons[:2] + block.reasons[3:])
    np.testing.assert_array_equal(CubeSource(h5).read(0, 20).ra, ra)
    assert CubeSource(tmp_path / "cube.zarr").pixel_scale_arcsec == 0.263
    assert np.isnan(CubeSource(tmp_path / "cube.zarr").read(0, 3).ra).all()  # no positions: NaN, not invented

    with h5py.File(tmp_path / "no_id.h5", "w") as handle:
        handle["images"] = images
    with pytest.raises(InputError, match="no_id.h5: expected a cube with arrays 'images'.*and 'id'"):
        CubeSource(tmp_path / "no_id.h5")


def tile_wcs(crpix_shift: float = 0.0, scale: float = SCALE) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [50.5 - crpix_shift, 50.5]
    wcs.wcs.cd = np.array([[-scale / 3600, 0.0], [0.0, scale / 3600]])
    return wcs


def write_tile(folder, name, wcs, rng, bands=("g", "r", "i"), shape=(100, 100)):
    planes = []
    for band in bands:
        plane = rng.normal(size=shape).astype(np.float32)
        fits.PrimaryHDU(plane, header=wcs.to_header()).writeto(folder / f"{name}_{band}.fits")
        planes.append(plane)
    return np.stack(planes)


@pytest.fixture
def tiles(tmp_path):
    """Tile A, and tile B over the same tangent point shifted 60 pixels in x (they overlap); a catalogue of an object
    inside A, one on A's edge that B holds whole, one on A's edge that no tile holds whole, and one off both."""
    rng = np.random.default_rng(3)
    wcs_a, wcs_b = tile_wcs(), tile_wcs(60.0)
    plane_a, plane_b = write_tile(tmp_path, "A", wcs_a, rng), write_tile(tmp_path, "B", wcs_b, rng)
    pixels = {"inside": (30, 40), "edge_of_a_inside_b": (95, 50), "edge": (3, 50), "outside": (400, 50)}
    ra, dec = wcs_a.pixel_to_world_values(*np.array(list(pixels.values()), float).T)
    catalogue = tmp_path / "catalogue.csv"
    with open(catalogue, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "RA", "Dec"])
        writer.writerows(zip(pixels, [repr(float(v)) for v in ra], [repr(float(v)) for v in dec]))
    pq.write_table(pa.table({"object_id": list(pixels), "ra": ra, "dec": dec}), tmp_path / "catalogue.parquet",
                   row_group_size=3)
    return {"dir": tmp_path, "files": sorted(tmp_path.glob("[AB]_*.fits")), "a": plane_a, "b": plane_b,
            "catalogue": catalogue}


def test_tile_cutouts_are_pixel_exact_and_edges_are_flagged_or_rejected_with_the_reason(tiles):
    half = SIZE // 2
    for catalogue in (tiles["catalogue"], tiles["dir"] / "catalogue.parquet"):
        source = TileSource(group_tiles(tiles["files"], ["g", "r", "i"]), catalogue, size=SIZE, pixel_scale_arcsec=SCALE)
        block = source.read(0, 4)
        assert list(block.ids) == ["inside", "edge_of_a_inside_b", "edge", "outside"]
        np.testing.assert_array_equal(block.images[0], tiles["a"][:, 40 - half: 40 + half, 30 - half: 30 + half])
        # whole on B (x = 95 - 60 = 35), so cut from B and not flagged
        np.testing.assert_array_equal(block.images[1], tiles["b"][:, 50 - half: 50 + half, 35 - half: 35 + half])
        expected = np.zeros((3, SIZE, SIZE), np.float32)  # x from -5 to 10 on A: 5 columns of zeros
        expected[:, :, 5:] = tiles["a"][:, 50 - half: 50 + half, 0:11]
        np.testing.assert_array_equal(block.images[2], expected)
        assert list(block.edge) == [False, False, True, False]
        assert block.padded_fraction[2] == pytest.approx(5 / 16)
        assert block.reasons[:3] == ["", "", ""] and "lies on no tile" in block.reasons[3]
        np.testing.assert_array_equal(block.images[3], 0.0)

    skipping = TileSource(group_tiles(tiles["files"], ["g", "r", "i"]), tiles["catalogue"], size=SIZE, edge="skip")
    reasons = skipping.read(0, 4).reasons
    assert reasons[:2] == ["", ""] and "on the edge of tile A: 31% of the cutout is off the tile" in reasons[2]


def test_cutouts_command_writes_a_cube_and_lists_the_rejected(tiles):
    out = tiles["dir"] / "cube.zarr"
    result = CliRunner().invoke(app, ["cutouts", *map(str, tiles["files"]), "--catalogue", str(tiles["catalogue"]),
                                      "--bands", "g,r,i", "--out", str(out), "--size", str(SIZE), "--preset", "lsst-gri"])
    assert result.exit_code == 0, result.output
    cube = CubeSource(out)
    block = cube.read(0, cube.n)
    assert list(block.ids) == ["inside", "edge_of_a_inside_b", "edge"] and list(block.edge) == [False, False, True]
    np.testing.assert_array_equal(block.images[0], tiles["a"][:, 32:48, 22:38])
    assert cube.pixel_scale_arcsec == pytest.approx(SCALE)
    with open(tiles["dir"] / "cube.zarr.rejected.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["outside"] and "lies on no tile" in rows[0]["reason"]


def test_a_pixel_scale_unlike_the_models_is_refused(tmp_path, tiles):
    model = make_model(tmp_path / "model.safetensors")
    rng = np.random.default_rng(0)
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    write_tile(coarse, "C", tile_wcs(scale=0.263), rng)
    with pytest.raises(InputError, match=r"C_g.fits: pixel scale 0.263 arcsec, but the model \(trained on preset "
                                         r"lsst-gri\) expects 0.2 arcsec.*resample the tiles"):
        predict_survey(sorted(coarse.glob("*.fits")), tmp_path / "out.parquet", catalogue=tiles["catalogue"],
                       bands=["g", "r", "i"], run=model, accelerator="cpu", devices=1)
    with pytest.raises(InputError, match="expects 0.5 arcsec"):
        make_cutouts(tiles["files"], tiles["catalogue"], tmp_path / "c.h5", bands=["g", "r", "i"], pixel_scale_arcsec=0.5)
    # scored from the tiles on the fly: the edge object padded and flagged, the one off the tiles rejected
    result = predict_survey(tiles["files"], tmp_path / "tiles.parquet", catalogue=tiles["catalogue"],
                            bands=["g", "r", "i"], run=model, accelerator="cpu", devices=1)
    rows = {r["id"]: r for r in table_rows(result.merged.path)}
    assert set(rows) == {"inside", "edge_of_a_inside_b", "edge"} and rows["edge"]["edge"]
    assert [r["id"] for r in table_rows(result.merged.rejected_path)] == ["outside"]


def test_parts_and_merge_rank_as_the_folder_path_does(tmp_path):
    model = make_model(tmp_path / "model.safetensors")
    images = np.random.default_rng(2).random((40, 3, SIZE, SIZE), dtype=np.float32)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    paths = [folder / f"c{i:03d}.npy" for i in range(40)]
    for path, image in zip(paths, images):
        np.save(path, image)
    images[11, 0, 0, 0] = np.nan  # rejected in the cube; a folder cutout like it is skipped
    np.save(paths[11], images[11])
    cube = write_h5(tmp_path / "cube.h5", images, [str(p) for p in paths])
    folder_csv = predict_catalog([folder], tmp_path / "folder.csv", run=model, batch_size=8, device="cpu", tta="all")
    with open(folder_csv, newline="") as handle:
        expected = list(csv.DictReader(handle))

    result = predict_survey([cube], tmp_path / "survey.parquet", run=model, chunk_rows=16, batch_size=8, tta="all",
                            accelerator="cpu", devices=1)
    assert sorted(p.name for p in result.parts.glob("part-*.parquet")) == [f"part-{i:06d}.parquet" for i in range(3)]
    rows = table_rows(result.merged.path)
    assert [r["id"] for r in rows] == [r["path"] for r in expected]
    assert [r["score"] for r in rows] == [float(r["score"]) for r in expected]  # float64, equal to the last bit
    assert [r["rank"] for r in rows] == list(range(1, 40)) and all(r["views"] == 8 for r in rows)
    assert [r["id"] for r in table_rows(result.merged.rejected_path)] == [str(paths[11])]

    # the same parts merged into CSV (full precision) and a FITS table; --top keeps the best rows
    merge_parts(result.parts, tmp_path / "survey.csv")
    with open(tmp_path / "survey.csv", newline="") as handle:
        assert [float(r["score"]) for r in csv.DictReader(handle)] == [r["score"] for r in rows]
    top = merge_parts(result.parts, tmp_path / "top.fits", top=5)
    table = Table.read(top.path)
    assert list(table["id"]) == [r["id"] for r in rows[:5]] and list(table["score"]) == [r["score"] for r in rows[:5]]
    assert list(table["edge"]) == [False] * 5
    with pytest.raises(InputError, match="unsupported catalogue type"):
        merge_parts(result.parts, tmp_path / "out.txt")

    # the same parts folder with other settings is refused by name, not mixed
    with pytest.raises(InputError, match="holds the parts of another run.*tta: parts 'all', now 'none'"):
        predict_survey([cube], tmp_path / "survey.parquet", run=model, chunk_rows=16, tta=False, accelerator="cpu",
                       devices=1)


def _predict_command(survey, out, *extra):
    return [sys.executable, "-m", "lensfinder", "predict", str(survey["cube"]), "--run", str(survey["model"]),
            "--out", str(out), "--chunk-size", "40", "--batch-size", "40", "--no-progress", "--accelerator", "cpu",
            *extra]


def test_a_run_killed_with_sigkill_resumes_where_it_stopped(survey, tmp_path):
    out = tmp_path / "catalogue.parquet"
    parts = tmp_path / "catalogue.parquet.parts"
    process = subprocess.Popen(_predict_command(survey, out, "--devices", "1"), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # imports alone take minutes on a loaded machine
    while not list(parts.glob("part-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("part-*.parquet")}
    assert 0 < len(kept) < 15, f"killed after its first part and before its last? {stderr.decode()[-2000:]}"
    assert not out.exists() and not list(parts.glob(".*tmp*"))  # no torn part left behind

    result = subprocess.run(_predict_command(survey, out, "--devices", "1"), env=ENV, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{15 - len(kept)} chunk(s) scored now, {len(kept)} before" in result.stdout
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in ((n, parts / n) for n in kept)} == kept
    assert table_rows(out) == survey["reference"]


def test_two_ddp_processes_give_the_one_process_catalogue(survey, tmp_path):
    out = tmp_path / "ddp.parquet"
    result = subprocess.run(_predict_command(survey, out, "--devices", "2", "--strategy", "ddp"), env=ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert len(list((tmp_path / "ddp.parquet.parts").glob("part-*.parquet"))) == 15
    assert table_rows(out) == survey["reference"]


def test_the_preset_pixel_scale_is_read_without_the_simulator_and_parts_default_to_about_rows_over_256():
    from lensfinder.simulate.presets import list_presets, load_preset
    from lensfinder.survey.engine import MAX_CHUNK_ROWS, auto_chunk_rows, preset_pixel_scale

    for name in list_presets():
        assert preset_pixel_scale(name) == float(load_preset(name)["pixel_scale_arcsec"]), name
    assert [auto_chunk_rows(n) for n in (10, 20_000, 200_000, 10**6, 10**8)] == [1024, 1024, 1024, 4096, MAX_CHUNK_ROWS]


def test_more_parts_than_may_be_open_merge_in_rounds_to_the_same_catalogue(survey, tmp_path, monkeypatch):
    import lensfinder.survey.merge as merge

    parts = survey["root"] / "reference.parquet.parts"  # 15 parts, and their rescore parts
    whole = merge_parts(parts, tmp_path / "whole.parquet")
    monkeypatch.setattr(merge, "MAX_OPEN_PARTS", 4)  # 4 at a time: runs of runs
    rounds = merge_parts(parts, tmp_path / "rounds.parquet", memory_rows=64)
    assert rounds.rows == whole.rows == 600
    assert table_rows(rounds.path) == table_rows(whole.path) == survey["reference"]
    assert not list(parts.glob(".merge-*"))  # the runs are removed
    top = merge_parts(parts, tmp_path / "top.parquet", top=7)
    assert table_rows(top.path) == survey["reference"][:7]
