"""Reading the user's cutouts, wherever a stage needs them (prediction, painting hosts, the inspection page, training
from cubes): one .npy or FITS file per object, one FITS file per band (NAME_<band>.fits), or a cube (HDF5 file or Zarr
group with `images` (N, C, H, W) and `id`), read by row range into a `Block`. Every problem is an `InputError`
naming the file."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..validation import FITS_SUFFIXES, InputError, as_chw, load_npy, split_band_name

CUBE_SUFFIXES = (".h5", ".hdf5", ".zarr")


def is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, and every .npy / FITS file below each folder, sorted; anything else is refused."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and (p.suffix == ".npy" or is_fits(p)))
            if not found:
                raise InputError(f"{item}: folder holds no .npy or FITS files")
            files += found
        elif item.is_file():
            if not (item.suffix == ".npy" or is_fits(item)):
                raise InputError(f"{item}: unsupported file type; expected .npy or FITS ({', '.join(FITS_SUFFIXES)}), "
                                 "or one cutout cube (.h5, .hdf5, .zarr) given alone, or FITS tiles with --catalogue")
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return files


def group_bands(files: list[Path], band_suffixes: list[str]) -> list[tuple[str, list[Path]]]:
    """Group one-file-per-band FITS cutouts NAME_<band>.fits into objects, bands in the given order."""
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        key, band = split_band_name(path, band_suffixes)
        if band is None:
            raise InputError(f"{path}: name does not end in _<band> for any band of {band_suffixes}")
        groups.setdefault(key, {})[band] = path
    out = []
    for key, bands in sorted(groups.items()):
        missing = [b for b in band_suffixes if b not in bands]
        if missing:
            raise InputError(f"{key}: band file(s) missing for band(s) {', '.join(missing)}")
        out.append((key, [bands[b] for b in band_suffixes]))
    return out


def read_fits(path: Path) -> np.ndarray:
    """The first image HDU of a FITS file with 2 or 3 axes (leading axes of length 1 dropped), as float32.
    Empty primaries, tables and 1-D HDUs are passed over; anything unreadable is an `InputError` naming the file."""
    from astropy.io import fits

    passed_over = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            with fits.open(path, memmap=False) as hdus:
                for number, hdu in enumerate(hdus):
                    data = hdu.data if hdu.is_image else None
                    if data is None:
                        passed_over.append(f"HDU {number}: {'no data' if hdu.is_image else type(hdu).__name__}")
                        continue
                    while data.ndim > 3 and data.shape[0] == 1:
                        data = data[0]
                    if data.ndim in (2, 3):
                        with np.errstate(over="ignore"):  # beyond float32: inf, which as_chw refuses by name
                            return np.array(data, dtype=np.float32)
                    passed_over.append(f"HDU {number}: image of shape {hdu.data.shape}")
    except Exception as err:  # astropy raises assorted errors on a truncated or corrupt file
        raise InputError(f"{path}: unreadable FITS file ({type(err).__name__}: {err}); check that the file is "
                         "complete and is a FITS image") from None
    raise InputError(f"{path}: expected an image HDU of shape (H, W) or (C, H, W), found {'; '.join(passed_over) or 'no HDU'}; "
                     "write one cutout per file as a 2-D or 3-D image")


def read_cutout(paths: list[Path], *, allow_pickle: bool = False) -> np.ndarray:
    """One object as float32 (C, H, W): a .npy or FITS file, or one single-band FITS file per band."""
    if len(paths) == 1:
        path = paths[0]
        return as_chw(read_fits(path) if is_fits(path) else load_npy(path, allow_pickle=allow_pickle), path)
    planes = []
    for path in paths:
        plane = as_chw(read_fits(path), path)
        if plane.shape[0] != 1:
            raise InputError(f"{path}: expected one band per file with --bands, found {plane.shape[0]} planes "
                             f"(shape {plane.shape}); drop --bands to read the file as one multi-band cutout")
        if planes and plane.shape != planes[0].shape:
            raise InputError(f"{path}: expected {planes[0].shape[1]}x{planes[0].shape[2]} pixels like {paths[0].name}, "
                             f"found {plane.shape[1]}x{plane.shape[2]}; every band of an object needs the same size")
        planes.append(plane)
    return np.concatenate(planes)



def lower_path(path: Path | str) -> str:
    return str(path).lower().rstrip("/")


def is_cube(path: Path | str) -> bool:
    return lower_path(path).endswith(CUBE_SUFFIXES)


@dataclass
class Block:
    """Rows [start, stop) of a source: float32 images (n, C, H, W) (zeros where a row could not be cut), the id, ra
    and dec of each row (NaN when the source has none), whether its cutout was padded at a tile edge (and which
    share of its pixels), and the reason it cannot be scored ("" when it can). `rows`: the source row of each (None:
    start, start + 1, ...)."""

    start: int
    images: np.ndarray
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    edge: np.ndarray
    padded_fraction: np.ndarray
    reasons: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # a catalogue's label / split columns, when it has them

    def __len__(self) -> int:
        return len(self.ids)

    def row_numbers(self) -> np.ndarray:
        return self.rows if self.rows is not None else self.start + np.arange(len(self), dtype=np.int64)


def strings(values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "SOT":  # bytes (HDF5), objects, numpy StringDType (Zarr)
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values.astype(str).astype(object)


def reject_bad_pixels(block: Block) -> Block:
    """NaN or infinite pixels (masked regions, a corrupt chunk) reject the row, naming how many."""
    finite = np.isfinite(block.images).reshape(len(block), -1)
    if finite.all():
        return block
    bad = (~finite).sum(1)
    for i in np.flatnonzero(bad):
        if not block.reasons[i]:
            block.reasons[i] = f"{int(bad[i])} pixel(s) are NaN or infinite (masked or missing data)"
            block.images[i] = 0.0
    return block


class CubeSource:
    """A cutout cube: an HDF5 file or a Zarr group holding `images` (N, C, H, W) and `id` (N,), optionally `ra`,
    `dec` (N,), `edge`, `padded_fraction` (written by `lensfinder cutouts`) and the attribute `pixel_scale_arcsec`.
    Read in row ranges; the file is opened lazily in each process (DataLoader workers, DDP ranks)."""

    kind = "cube"

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such cube (expected an HDF5 file or a Zarr folder)")
        self._handle, self._pid = None, None
        store = self._store()
        if "images" not in store or "id" not in store:
            found = ", ".join(sorted(store.keys())) or "nothing"
            raise InputError(f"{self.path}: expected a cube with arrays 'images' (N, C, H, W) and 'id' (N,), found "
                             f"{found}; write one with `lensfinder cutouts` or with h5py/zarr under those names")
        images = store["images"]
        if len(images.shape) != 4 or images.shape[2] != images.shape[3]:
            raise InputError(f"{self.path}: 'images' must have shape (N, C, H, W) with H = W, found {tuple(images.shape)}; "
                             "store channels first, one square cutout per row")
        self.n, self.channels, self.size = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        for name in ("id", "ra", "dec", "edge", "padded_fraction"):
            if name in store and tuple(store[name].shape) != (self.n,):
                raise InputError(f"{self.path}: '{name}' has shape {tuple(store[name].shape)}, expected ({self.n},) "
                                 "like the first axis of 'images'")
        scale = dict(store.attrs).get("pixel_scale_arcsec")
        self.pixel_scale_arcsec = float(scale) if scale is not None else None
        self.has_position = "ra" in store and "dec" in store
        self._optional = [name for name in ("ra", "dec", "edge", "padded_fraction") if name in store]
        self.description = {"kind": "cube", "path": str(self.path.resolve()), "rows": self.n,
                            "shape": [self.channels, self.size, self.size]}

    def _store(self):
        if self._pid != os.getpid():
            if lower_path(self.path).endswith(".zarr"):
                import zarr

                try:
                    self._handle = zarr.open_group(str(self.path), mode="r")
                except Exception as err:  # zarr raises assorted errors on a folder that is not a group
                    raise InputError(f"{self.path}: not a readable Zarr group ({type(err).__name__}: {err})") from None
            else:
                import h5py

                try:
                    self._handle = h5py.File(self.path, "r")
                except OSError as err:
                    raise InputError(f"{self.path}: not a readable HDF5 file ({err})") from None
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self):  # a DataLoader worker or a spawned process reopens the file itself
        return {**self.__dict__, "_handle": None, "_pid": None}

    def read(self, start: int, stop: int) -> Block:
        store, n = self._store(), stop - start
        reasons = [""] * n
        try:
            images = np.asarray(store["images"][start:stop], dtype=np.float32)
        except Exception as err:  # a corrupt chunk rejects its rows, not the run
            images = np.zeros((n, self.channels, self.size, self.size), np.float32)
            reasons = [f"unreadable cube rows {start}-{stop - 1} ({type(err).__name__}: {err})"] * n
        columns = {name: store[name][start:stop] for name in ("id", *self._optional)}
        return self._block(start, None, images, columns, reasons)

    def storage_rows(self) -> int:
        """Rows per storage chunk of 'images' (1 for a contiguous HDF5 dataset): reading one row costs one chunk."""
        chunks = getattr(self._store()["images"], "chunks", None)
        return int(chunks[0]) if chunks else 1

    def read_rows(self, rows: np.ndarray) -> Block:
        """The rows `rows` (sorted, distinct), read one storage chunk at a time: the rows of a chunk are read as the
        span between the first and the last of them, so each chunk holding any is read once."""
        store, rows = self._store(), np.asarray(rows, dtype=np.int64)
        n, per_chunk = len(rows), self.storage_rows()
        images = np.zeros((n, self.channels, self.size, self.size), np.float32)
        columns = {name: [] for name in ("id", *self._optional)}
        reasons = [""] * n
        groups = np.flatnonzero(np.diff(rows // per_chunk)) + 1
        for index in np.split(np.arange(n), groups) if n else []:
            first, last = int(rows[index[0]]), int(rows[index[-1]])
            take = rows[index] - first
            try:
                images[index] = np.asarray(store["images"][first:last + 1], dtype=np.float32)[take]
            except Exception as err:  # a corrupt chunk rejects its rows, not the run
                for i in index:
                    reasons[i] = f"unreadable cube rows {first}-{last} ({type(err).__name__}: {err})"
            for name in columns:
                columns[name].append(np.asarray(store[name][first:last + 1])[take])
        joined = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
        return self._block(int(rows[0]) if n else 0, rows, images, joined, reasons)

    def _block(self, start: int, rows: np.ndarray | None, images: np.ndarray, columns: dict, reasons: list[str]) -> Block:
        n = len(images)
        block = Block(start, images, strings(columns["id"]),
                      np.asarray(columns.get("ra", np.full(n, np.nan)), np.float64),
                      np.asarray(columns.get("dec", np.full(n, np.nan)), np.float64),
                      np.asarray(columns.get("edge", np.zeros(n, bool)), bool),
                      np.asarray(columns.get("padded_fraction", np.zeros(n, np.float32)), np.float32), reasons, rows)
        return reject_bad_pixels(block)
