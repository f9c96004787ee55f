"""Every reader of user files, fed random shapes, dtypes, NaN/inf, truncated files, pickles and odd FITS layouts:
each input is read correctly (the shape and pixels an independent rule expects) or refused with an `InputError`
naming the file, never another exception and never a silently different shape. Also the CLI's user errors."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lensfinder.validation import InputError, as_chw, check_channels, load_npy

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMERIC = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64]
OTHER = [np.bool_, np.complex64, np.dtype("U3"), np.dtype("datetime64[s]")]


def expected_chw(array: np.ndarray) -> tuple[int, int, int] | None:
    """The rule, written independently of the code under test: the (C, H, W) an array reads as, or None."""
    if array.dtype.kind not in "iuf":
        return None
    if array.ndim == 1:
        side = math.isqrt(array.size)
        shape = (1, side, side) if side > 0 and side * side == array.size else None
    elif array.ndim == 2:
        shape = (1, *array.shape)
    elif array.ndim == 3:
        shape = array.shape
    else:
        return None
    if shape is None or 0 in shape or (shape[0] > 16 and shape[-1] <= 16):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(array.astype(np.float32)).all():
            return None
    return tuple(shape)


def read_or_refuse(read, source: str):
    """The result of `read()`, or None when it refused with an InputError naming `source`; any other
    exception fails the test."""
    try:
        return read()
    except InputError as err:
        assert source in str(err), f"the message does not name {source}: {err}"
        return None


def check_read(result: np.ndarray | None, array: np.ndarray) -> None:
    expected = expected_chw(array)
    if expected is None:
        assert result is None, f"{array.dtype} {array.shape} should be refused, read as {None if result is None else result.shape}"
        return
    assert result is not None, f"{array.dtype} {array.shape} should read as {expected}"
    assert result.shape == expected and result.dtype == np.float32
    np.testing.assert_array_equal(result.ravel(), array.astype(np.float32).ravel())


def _elements(dtype):
    if np.dtype(dtype).kind == "f":
        return st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    return None


arrays = st.sampled_from(NUMERIC + OTHER).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=20),
                             elements=_elements(dtype)))


@SETTINGS
@given(array=arrays)
def test_as_chw_reads_every_published_layout_or_refuses_naming_the_file(array):
    check_read(read_or_refuse(lambda: as_chw(array, "cut/x.npy"), "cut/x.npy"), array)


@SETTINGS
@given(array=arrays)
def test_npy_files_and_the_training_reader_round_trip_or_refuse(array):
    from lensfinder.data.cache import read_image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, array)
        loaded = load_npy(path)
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        check_read(read_or_refuse(lambda: as_chw(loaded, path), str(path)), array)
        check_read(read_or_refuse(lambda: read_image(path), str(path)), array)  # the per-file check of training data


@SETTINGS
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8)), data=st.data())
def test_truncated_npy_files_are_refused(array, data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.npy"
        np.save(path, array)
        blob = path.read_bytes()
        path.write_bytes(blob[: data.draw(st.integers(0, len(blob) - 1), label="kept bytes")])
        with pytest.raises(InputError, match="cut.npy"):
            load_npy(path)


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_garbage_bytes_are_refused(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "junk.npy"
        path.write_bytes(blob)
        read_or_refuse(lambda: as_chw(load_npy(path), path), "junk.npy")


rows = st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6), min_size=1, max_size=6)


@SETTINGS
@given(rows=rows, mass=st.one_of(st.none(), st.floats(1e-24, 1e-21)))
def test_pickled_object_arrays_need_allow_pickle_and_then_read_right(rows, mass):
    image = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        image[i] = np.asarray(row)
    if mass is None:
        stored = image
    else:  # the axion variant [image, m_a]
        stored = np.empty(2, dtype=object)
        stored[0], stored[1] = image, mass
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vort_1.npy"
        np.save(path, stored, allow_pickle=True)
        with pytest.raises(InputError, match=r"vort_1\.npy.*--allow-pickle"):
            load_npy(path)
        result = read_or_refuse(lambda: as_chw(load_npy(path, allow_pickle=True), path), "vort_1.npy")
    if len({len(row) for row in rows}) > 1:
        assert result is None  # ragged rows are no image
    else:
        check_read(result, np.asarray(rows, dtype=np.float64))


def test_npz_archives_and_pickled_non_arrays_are_refused(tmp_path):
    archive = tmp_path / "two.npy"
    with open(archive, "wb") as handle:
        np.savez(handle, a=np.ones((4, 4)), b=np.zeros(3))
    with pytest.raises(InputError, match=r"two\.npy: expected one \.npy array, found an \.npz archive \(arrays: a, b\)"):
        load_npy(archive)
    record = tmp_path / "record.npy"
    record.write_bytes(pickle.dumps({"image": [1, 2]}))
    with pytest.raises(InputError, match=r"record\.npy.*--allow-pickle"):
        load_npy(record)
    with pytest.raises(InputError, match=r"record\.npy: expected a \.npy array, found a pickled dict"):
        load_npy(record, allow_pickle=True)


@SETTINGS
@given(shape=st.lists(st.integers(0, 70), max_size=5).map(tuple), channels=st.integers(1, 5), size=st.integers(1, 70))
def test_check_channels_accepts_only_the_models_shape(shape, channels, size):
    accepted = read_or_refuse(lambda: check_channels(shape, expected_channels=channels, expected_size=size,
                                                     source="obj9") or "accepted", "obj9")
    assert (accepted == "accepted") == (shape == (channels, size, size))


@st.composite
def fits_hdus(draw):
    """An HDU list with an optional image primary, then tables, empty images and images of 1 to 4 axes."""
    from astropy.io import fits

    def image_data():
        shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
        if draw(st.booleans()):
            shape = [1] * draw(st.integers(1, 2)) + shape  # leading axes of length 1, as some writers add
        return draw(hnp.arrays(draw(st.sampled_from([np.float32, np.float64, np.int16, np.uint8])), tuple(shape[:5])))

    primary = fits.PrimaryHDU(image_data() if draw(st.booleans()) else None)
    extensions = []
    for kind in draw(st.lists(st.sampled_from(["image", "table", "empty"]), max_size=3)):
        if kind == "image":
            extensions.append(fits.ImageHDU(image_data()))
        elif kind == "table":
            extensions.append(fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.ones(3))]))
        else:
            extensions.append(fits.ImageHDU())
    return fits.HDUList([primary, *extensions])


def expected_fits_image(hdus) -> np.ndarray | None:
    """The rule: the first image HDU with data whose axes, after dropping leading axes of length 1, number 2 or 3."""
    for hdu in hdus:
        if not hdu.is_image or hdu.data is None:
            continue
        data = np.asarray(hdu.data)
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim in (2, 3):
            return data
    return None


@SETTINGS
@given(data=st.data(), truncate=st.booleans())
def test_fits_reader_takes_the_first_image_hdu_or_refuses(data, truncate):
    from lensfinder.evaluate.predict import read_cutout, read_fits

    hdus = data.draw(fits_hdus(), label="HDUs")
    expected = expected_fits_image(hdus)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "obj_r.fits"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdus.writeto(path)
        if truncate:
            blob = path.read_bytes()
            path.write_bytes(blob[: data.draw(st.integers(0, len(blob) - 1), label="kept bytes")])
        result = read_or_refuse(lambda: read_fits(path), "obj_r.fits")
        if expected is None:
            assert result is None
        elif result is not None:  # a truncated file may still hold the whole image: then it must be that image
            with np.errstate(over="ignore"):
                np.testing.assert_array_equal(result, expected.astype(np.float32))
        else:
            assert truncate
        cutout = read_or_refuse(lambda: read_cutout([path]), "obj_r.fits")
    if result is not None:
        check_read(cutout, result)


def test_fits_layouts_named_in_the_message(tmp_path):
    from astropy.io import fits

    from lensfinder.evaluate.predict import read_cutout, read_fits

    image = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(image)]).writeto(tmp_path / "ext2.fits")
    np.testing.assert_array_equal(read_fits(tmp_path / "ext2.fits"), image)  # image in extension 2
    fits.PrimaryHDU(image[None, None]).writeto(tmp_path / "4d.fits")
    assert read_fits(tmp_path / "4d.fits").shape == (2, 8, 8)  # (1, 1, C, H, W) -> (C, H, W)
    fits.PrimaryHDU(np.ones((2, 2, 8, 8), np.float32)).writeto(tmp_path / "cube.fits")
    with pytest.raises(InputError, match=r"cube\.fits: expected an image HDU .* found HDU 0: image of shape \(2, 2, 8, 8\)"):
        read_fits(tmp_path / "cube.fits")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    with pytest.raises(InputError, match=r"table\.fits: .* found HDU 0: no data; HDU 1: BinTableHDU"):
        read_fits(tmp_path / "table.fits")
    # --bands: a band file holding several planes, or bands of different sizes, are refused, not cut silently
    for band, data in (("g", image[0]), ("r", image), ("i", np.ones((4, 4), np.float32))):
        fits.PrimaryHDU(data).writeto(tmp_path / f"obj_{band}.fits")
    with pytest.raises(InputError, match=r"obj_r\.fits: expected one band per file with --bands, found 2 planes"):
        read_cutout([tmp_path / "obj_g.fits", tmp_path / "obj_r.fits"])
    with pytest.raises(InputError, match=r"obj_i\.fits: expected 8x8 pixels like obj_g\.fits, found 4x4"):
        read_cutout([tmp_path / "obj_g.fits", tmp_path / "obj_i.fits"])
    both = read_cutout([tmp_path / "obj_g.fits", tmp_path / "obj_g.fits"])
    np.testing.assert_array_equal(both, np.stack([image[0], image[0]]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_help_lists_simulate_without_importing_torch_or_the_simulator():
    code = ("import sys\nfrom lensfinder.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'astropy', 'matplotlib', 'lensfinder.simulate') if m in sys.modules))")
    result = _cli("-c", code)
    assert result.returncode == 0, result.stderr
    assert "simulate" in result.stdout and "predict" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_simulate_says_why_when_its_import_fails(monkeypatch):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    monkeypatch.setitem(sys.modules, "lensfinder.simulate.cli", None)  # makes `import lensfinder.simulate.cli` fail
    result = CliRunner().invoke(app, ["simulate", "lensfinding", "--out", "x"])
    assert result.exit_code == 1
    assert "`lensfinder simulate` is unavailable: importing the simulator failed (ModuleNotFoundError" in result.output


def test_demo_with_an_unknown_scale_is_one_line_not_a_traceback(tmp_path):
    result = _cli("-m", "lensfinder", "demo", "--scale", "x", "--out", str(tmp_path / "demo"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --scale 'x': unknown demo scale; expected one of small, full"
    assert not (tmp_path / "demo").exists()
