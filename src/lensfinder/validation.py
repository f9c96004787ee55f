"""Every external input is checked here; a failed check raises `InputError` naming the input.

`InputError` is the user-mistake error: the CLI prints its message without a traceback. A message names
the file or option, what was expected, what was found, and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Object arrays nest at most this deep in the published layouts ([image, m_a] around rows of pixels).
_MAX_OBJECT_NESTING = 3


FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")


def split_band_name(path: Path, bands) -> tuple[str, str | None]:
    """(object key, band) of a one-file-per-band FITS name NAME_<band>.fits (any of FITS_SUFFIXES): the key is
    the folder plus NAME; the band is None when the name ends in none of `bands` (the caller says what to do)."""
    stem = Path(path).name
    for suffix in FITS_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    band = next((b for b in bands if stem.endswith(f"_{b}")), None)
    return (str(Path(path).parent / stem[: -len(band) - 1]) if band else str(Path(path).parent / stem)), band


class InputError(ValueError):
    """A user-facing input problem: the message names the input, what was expected and what was found."""


def load_npy(path: Path, *, allow_pickle: bool = False) -> np.ndarray:
    """Load one .npy file; pickled object arrays are refused unless `allow_pickle` (loading pickles runs code)."""
    try:
        array = np.load(path, allow_pickle=allow_pickle)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(
                f"{path}: holds a pickled object array (e.g. the axion [image, m_a] variant); loading pickles can run code, "
                "so it is refused by default. If you trust the file, pass --allow-pickle."
            ) from None
        raise InputError(f"{path}: unreadable or truncated .npy file ({err}); re-save it with numpy.save") from None
    except Exception as err:  # numpy and pickle raise assorted errors on a corrupt header or payload
        raise InputError(f"{path}: unreadable or truncated .npy file ({type(err).__name__}: {err}); "
                         "re-save it with numpy.save") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        names = ", ".join(array.files) or "none"
        array.close()
        raise InputError(f"{path}: expected one .npy array, found an .npz archive (arrays: {names}); "
                         "save each image with numpy.save")
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: expected a .npy array, found a pickled {type(array).__name__}; "
                         "save the image with numpy.save")
    return array


def as_chw(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Interpret any of the published layouts of one image as a float32 (C, H, W) array.

    Accepted: (H, W); (C, H, W) (including C = 1); a flat square (H*W,) vector; an object array of H row
    vectors of length W; and the axion variant `[image, m_a]` (object array whose first item is the image).
    Refused with an `InputError` naming `path`: anything else, an empty axis, and NaN or infinite pixels.
    """
    array = np.asarray(array)
    if array.dtype == object:
        array = _from_object_array(array, path)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{path}: expected a numeric image array, found dtype {array.dtype}; "
                         "store pixel values as integers or floats")
    if array.ndim == 1:
        side = math.isqrt(array.size)
        if side * side != array.size or side == 0:
            raise InputError(f"{path}: a flat image must have a square number of pixels, found shape {array.shape}; "
                             "reshape it to (H, W)")
        array = array.reshape(1, side, side)
    elif array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise InputError(f"{path}: expected an image of shape (H, W) or (C, H, W), found shape {array.shape}; "
                         "save one image per file")
    if 0 in array.shape:
        raise InputError(f"{path}: expected an image with pixels, found the empty shape {array.shape}")
    if array.shape[0] > 16 and array.shape[-1] <= 16:
        raise InputError(
            f"{path}: expected channels first (C, H, W), found shape {array.shape} (channels last?); "
            "transpose the array to (C, H, W)"
        )
    finite_before = bool(np.isfinite(array).all())
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        what = "are NaN or infinite" if not finite_before else "exceed the float32 range"
        raise InputError(f"{path}: {bad} pixel(s) {what}; clean or mask the image before use")
    return array


def _from_object_array(array: np.ndarray, path: Path | str, depth: int = 0) -> np.ndarray:
    if depth >= _MAX_OBJECT_NESTING:
        raise InputError(f"{path}: object array nested more than {_MAX_OBJECT_NESTING} deep; "
                         "expected [image, m_a] or a list of equal-length rows")
    items = list(array.ravel())
    if len(items) == 2 and np.ndim(items[1]) == 0 and np.ndim(items[0]) >= 1:
        image = np.asarray(items[0])  # axion variant [image, m_a]: the mass is metadata, not a pixel
        return _from_object_array(image, path, depth + 1) if image.dtype == object else image
    try:
        return np.stack([np.asarray(row, dtype=np.float64) for row in items])
    except (ValueError, TypeError, OverflowError):
        raise InputError(
            f"{path}: object array of shape {array.shape} is neither [image, m_a] nor a list of equal-length "
            "numeric rows; save the image as a numeric array"
        ) from None


def check_channels(image_shape: tuple[int, ...], *, expected_channels: int, expected_size: int | None, source: str) -> None:
    """Refuse an image whose channel count (or size) does not match what a trained model expects."""
    if len(image_shape) != 3:
        raise InputError(f"{source}: expected an image of shape (C, H, W), found shape {tuple(image_shape)}; "
                         "save one image per file")
    channels, height, width = image_shape
    if channels != expected_channels:
        raise InputError(
            f"{source}: expected shape (C, H, W) with C={expected_channels} for this model, found C={channels} "
            f"(shape {tuple(image_shape)}); use a model trained on {channels}-band images or stack the bands"
        )
    if expected_size is not None and (height, width) != (expected_size, expected_size):
        raise InputError(
            f"{source}: expected {expected_size}x{expected_size} pixels for this model, found {height}x{width}; "
            "cut out or resample the images to the training size"
        )
