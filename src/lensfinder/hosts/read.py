"""The user's cutouts as painting hosts, their PSF images and an Einstein-radius catalogue: read and checked here,
every problem an `InputError` naming the file, what was expected, what was found and the fix.

Hosts: a folder of cutouts (any depth; hidden files skipped) in the layouts `lensfinder predict` reads: one
.npy or FITS file per object, (C, H, W) with the bands in the stated order, or one FITS file per band named
NAME_<band>.fits; or a cube (.h5, .hdf5, .zarr: `images` (N, C, H, W) and `id`, as `lensfinder cutouts` writes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.cutouts import CubeSource, expand_inputs, group_bands, is_cube, is_fits, read_cutout, read_fits
from ..validation import FITS_SUFFIXES, InputError, as_chw, load_npy, split_band_name

PSF_SUFFIXES = (".npy", *FITS_SUFFIXES)
CATALOGUE_SUFFIXES = (".csv", ".parquet")
CATALOGUE_KEYS = ("id", "object_id", "file", "path", "filename")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*FITS_SUFFIXES, ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class HostSet:
    """The hosts of `source` in a fixed order (sorted by id), read one at a time: `ids`, `files` (as given,
    relative to the folder; a cube's path and row), `read(i)` -> float32 (C, H, W). Every host must have
    len(`bands`) bands and the first host's square shape; a host that does not is refused by name when read."""

    def __init__(self, source: Path, *, bands: list[str]):
        self.source, self.bands = Path(source), list(bands)
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise InputError(f"--bands {','.join(self.bands)}: expected distinct band names in channel order, e.g. g,r,i")
        if is_cube(self.source):
            self._cube = CubeSource(self.source)
            ids = []
            for start in range(0, self._cube.n, 4096):
                ids += [str(v) for v in self._cube.read(start, min(start + 4096, self._cube.n)).ids]
            entries = [(obj_id, [f"{self.source.name}#{row}"], row) for row, obj_id in enumerate(ids)]
            self.pixel_scale_arcsec = self._cube.pixel_scale_arcsec
        elif self.source.is_dir():
            self._cube = None
            files = expand_inputs([self.source])
            fits_files = [f for f in files if is_fits(f)]
            per_band = bool(fits_files) and all(split_band_name(f, self.bands)[1] for f in fits_files)
            objects = ([(key, paths) for key, paths in group_bands(fits_files, self.bands)] if per_band else
                       [(str(f.parent / _stem(f)), [f]) for f in fits_files])
            objects += [(str(f.parent / _stem(f)), [f]) for f in files if not is_fits(f)]
            entries = [(Path(key).relative_to(self.source).as_posix(), paths, None) for key, paths in objects]
            self.pixel_scale_arcsec = None
        else:
            raise InputError(f"{self.source}: no such folder or cube; expected a folder of .npy / FITS cutouts or a "
                             ".h5 / .hdf5 / .zarr cube")
        entries.sort(key=lambda e: e[0])
        seen = {}
        for obj_id, paths, _ in entries:
            if obj_id in seen:
                raise InputError(f"{self.source}: two hosts share the id {obj_id!r} ({seen[obj_id]} and {paths[0]}); "
                                 "give every cutout its own name")
            seen[obj_id] = paths[0]
        if not entries:
            raise InputError(f"{self.source}: holds no cutouts")
        self.ids = [e[0] for e in entries]
        self._paths = [e[1] for e in entries]
        self._rows = [e[2] for e in entries]
        self.files = [";".join(p if isinstance(p, str) else Path(p).relative_to(self.source).as_posix() for p in paths)
                      for paths in self._paths]
        first = self._read_unchecked(0)
        self.shape = first.shape
        self._check(first, 0)
        self.description = {"kind": "cube" if self._cube else "folder", "path": str(self.source.resolve()),
                            "hosts": len(self.ids), "shape": list(self.shape), "bands": self.bands}

    def __len__(self) -> int:
        return len(self.ids)

    def _name(self, i: int) -> str:
        return f"{self.source} row {self._rows[i]} (id {self.ids[i]})" if self._cube else str(self._paths[i][0])

    def _read_unchecked(self, i: int) -> np.ndarray:
        if self._cube is None:
            return read_cutout(self._paths[i])
        block = self._cube.read(self._rows[i], self._rows[i] + 1)
        if block.reasons[0]:
            raise InputError(f"{self._name(i)}: {block.reasons[0]}; clean or drop the row before painting on it")
        return block.images[0]

    def _check(self, image: np.ndarray, i: int) -> None:
        name = self._name(i)
        c, h, w = image.shape
        if c != len(self.bands):
            fix = ("name the files NAME_<band>.fits for every band of --bands" if self._cube is None and
                   len(self._paths[i]) == 1 and c == 1 else f"pass --bands with {c} band names in channel order")
            raise InputError(f"{name}: expected {len(self.bands)} band(s) ({','.join(self.bands)}), found {c} "
                             f"(shape {image.shape}); {fix}")
        if h != w:
            raise InputError(f"{name}: expected a square cutout, found {h}x{w}; cut square cutouts")
        if hasattr(self, "shape") and image.shape != self.shape:
            raise InputError(f"{name}: expected shape {self.shape} like {self.files[0]}, found {image.shape}; "
                             "every host of one painted set needs the same size and bands")

    def read(self, i: int) -> np.ndarray:
        image = self._read_unchecked(i)
        self._check(image, i)
        return image


def _read_plane(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: no such PSF file")
    array = read_fits(path) if is_fits(path) else load_npy(path) if path.suffix == ".npy" else None
    if array is None:
        raise InputError(f"{path}: unsupported PSF file type; expected one of {', '.join(PSF_SUFFIXES)}")
    image = as_chw(array, path)
    if image.shape[0] != 1:
        raise InputError(f"{path}: expected one 2-D PSF image per band, found shape {image.shape}; write one file per band")
    return image[0].astype(np.float64)


def check_psf(psf: np.ndarray, source: str, *, host_size: int) -> np.ndarray:
    """One band's PSF image, normalised to sum 1: 2-D, square, odd sides (the centre is a pixel), not larger than
    the hosts, finite, with a positive sum."""
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise InputError(f"{source}: expected a square PSF image with odd sides (K x K, centred on the middle pixel), "
                         f"found shape {psf.shape}; crop or pad it to an odd size, e.g. with `lensfinder psf`")
    if psf.shape[0] > host_size:
        raise InputError(f"{source}: the PSF image ({psf.shape[0]} px) is larger than the hosts ({host_size} px); "
                         "crop it to at most the cutout size")
    if not np.isfinite(psf).all() or not psf.sum() > 0:
        raise InputError(f"{source}: PSF pixels must be finite with a positive sum, found sum {psf.sum()!r}")
    return psf / psf.sum()


def read_psf(spec: str, bands: list[str], *, host_size: int) -> tuple[np.ndarray, list[str]]:
    """PSF images (C, K, K) in band order, each summing to 1, and their files, from `spec`: a folder holding one
    file NAME_<band>.fits (or .npy) per band (as `lensfinder psf` writes), or files in band order, comma-separated.
    Bands of different sizes are zero-padded to the largest."""
    path = Path(spec)
    if path.is_dir():
        found: dict[str, Path] = {}
        for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.name.lower().endswith(PSF_SUFFIXES)):
            band = split_band_name(f.with_suffix("") if f.suffix == ".npy" else f, bands)[1]
            if band is not None:
                if band in found:
                    raise InputError(f"{path}: two PSF files for band {band} ({found[band].name}, {f.name}); keep one")
                found[band] = f
        missing = [b for b in bands if b not in found]
        if missing:
            raise InputError(f"{path}: no PSF file for band(s) {', '.join(missing)} (expected NAME_<band>.fits or "
                             f".npy, e.g. psf_{missing[0]}.fits, for each band of {','.join(bands)}); make them with `lensfinder psf`")
        files = [found[b] for b in bands]
    else:
        files = [Path(p.strip()) for p in spec.split(",") if p.strip()]
        if len(files) != len(bands):
            raise InputError(f"--psf {spec}: expected one PSF file per band ({len(bands)}: {','.join(bands)}), found "
                             f"{len(files)}; give a folder of NAME_<band>.fits files or the files in band order")
    planes = [check_psf(_read_plane(f), str(f), host_size=host_size) for f in files]
    size = max(p.shape[0] for p in planes)
    out = np.zeros((len(planes), size, size))
    for b, p in enumerate(planes):
        pad = (size - p.shape[0]) // 2
        out[b, pad:pad + p.shape[0], pad:pad + p.shape[0]] = p
    return out, [str(f) for f in files]


def read_theta_e_catalogue(path: Path, column: str, hosts: HostSet) -> dict[str, float]:
    """Einstein radii (arcsec) of the hosts that `path` (CSV or Parquet) gives in `column`, keyed by host id. Rows
    are matched to hosts by the first of the columns id, object_id, file, path, filename (any case) that the table
    has: its value is a host's id, its file name, or its file name without the suffix. Empty or NaN values, and
    hosts the table does not list, are left out (those hosts draw theta_E from the host relation)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such catalogue file")
    if not path.name.lower().endswith(CATALOGUE_SUFFIXES):
        raise InputError(f"{path}: unsupported catalogue type; expected one of {', '.join(CATALOGUE_SUFFIXES)}")
    try:
        if path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except Exception as err:
        raise InputError(f"{path}: unreadable catalogue ({type(err).__name__}: {err})") from None
    lowered = {c.lower(): c for c in table.column_names}
    key = next((lowered[k] for k in CATALOGUE_KEYS if k in lowered), None)
    if key is None or column not in table.column_names:
        raise InputError(f"{path}: expected a key column ({', '.join(CATALOGUE_KEYS)}) and the column {column!r} "
                         f"(--theta-e-column), found {', '.join(table.column_names)}")
    keys = [str(v) for v in table.column(key).to_pylist()]
    values = table.column(column).to_pylist()
    names: dict[str, str] = {}
    for obj_id, files in zip(hosts.ids, hosts.files):
        first = files.split(";")[0]
        for alias in (obj_id, Path(first).name, _stem(Path(first)), Path(obj_id).name):
            names.setdefault(alias, obj_id)
    out = {}
    for k, v in zip(keys, values):
        host = names.get(k) or names.get(Path(k).name) or names.get(_stem(Path(k)))
        try:
            value = float(v) if v is not None and v != "" else math.nan
        except (TypeError, ValueError):
            raise InputError(f"{path}: column {column!r} holds {v!r} for {k!r}; expected an Einstein radius in arcsec") from None
        if host is not None and math.isfinite(value):
            if value <= 0:
                raise InputError(f"{path}: column {column!r} holds {value} for {k!r}; expected a positive Einstein radius "
                                 "in arcsec (leave the cell empty to draw it from the host relation)")
            out[host] = value
    return out
