"""Where survey cutouts come from, read by row range: HDF5/Zarr cubes (N, C, H, W) with an id table, or per-band FITS
tiles with a TAN (any celestial) WCS plus a catalogue of id, ra, dec (FITS table, CSV or Parquet), cut on the fly.
Each `read(start, stop)` (or `read_rows(rows)`, for a few rows spread over the source) gives a `Block`: the images of
those rows and, per row, why it cannot be scored ("" if it can)."""

from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.cutouts import CUBE_SUFFIXES, Block, CubeSource, is_cube, lower_path as _lower, reject_bad_pixels as _reject_bad_pixels, strings as _strings  # noqa: F401
from ..validation import FITS_SUFFIXES, InputError, split_band_name

CATALOGUE_SUFFIXES = (".parquet", ".csv", *FITS_SUFFIXES)
EDGE_RULES = ("pad", "skip")  # an object whose cutout runs off its tile: zero-padded and flagged, or rejected
PIXEL_SCALE_TOLERANCE = 0.01  # relative: a tile whose pixels differ from the model's by more is refused


class CatalogueTable:
    """The id, ra, dec columns (names matched without case; `object_id` also names the id) of a Parquet, CSV or FITS
    table, read by row range, and its `label` and `split` columns when it has them (copied into a cube by
    `lensfinder cutouts`, for training). Parquet is read row group by row group and FITS memory-mapped; a CSV is read
    whole into Arrow columns (fine to ~10^7 rows: convert larger catalogues to Parquet)."""

    ID_NAMES = ("id", "object_id", "objid")
    EXTRA = ("label", "split")

    def __init__(self, path: Path):
        self.path = Path(path)
        name = _lower(self.path)
        if not name.endswith(CATALOGUE_SUFFIXES):
            raise InputError(f"{self.path}: unsupported catalogue type; expected one of {', '.join(CATALOGUE_SUFFIXES)}")
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such catalogue file")
        self._cache: tuple[int, int, dict] | None = None
        try:
            if name.endswith(".parquet"):
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetFile(self.path)
                columns = self._parquet.schema_arrow.names
                self.n = self._parquet.metadata.num_rows
                sizes = [self._parquet.metadata.row_group(i).num_rows for i in range(self._parquet.num_row_groups)]
                self._group_starts = np.concatenate([[0], np.cumsum(sizes)])
            elif name.endswith(".csv"):
                import pyarrow.csv as pcsv

                self._table = pcsv.read_csv(self.path)
                columns, self.n = self._table.column_names, self._table.num_rows
            else:
                from astropy.io import fits

                hdus = fits.open(self.path, memmap=True)
                tables = [h for h in hdus if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
                if not tables:
                    raise InputError(f"{self.path}: no table HDU; write the catalogue as a FITS binary table")
                self._fits = tables[0].data
                columns, self.n = list(self._fits.columns.names), len(self._fits)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{self.path}: unreadable catalogue ({type(err).__name__}: {err})") from None
        lowered = {c.lower(): c for c in columns}
        id_name = next((lowered[c] for c in self.ID_NAMES if c in lowered), None)
        if id_name is None or "ra" not in lowered or "dec" not in lowered:
            raise InputError(f"{self.path}: expected columns id, ra, dec (degrees), found {', '.join(columns)}; rename "
                             "the columns (any case; object_id also names the id)")
        self.columns = {"id": id_name, "ra": lowered["ra"], "dec": lowered["dec"],
                        **{name: lowered[name] for name in self.EXTRA if name in lowered}}
        self.extra_columns = tuple(name for name in self.EXTRA if name in self.columns)

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if hasattr(self, "_parquet"):
            first = int(np.searchsorted(self._group_starts, start, side="right")) - 1
            last = int(np.searchsorted(self._group_starts, stop, side="left"))
            if self._cache is None or self._cache[0] != first or self._cache[1] != last:
                table = self._parquet.read_row_groups(list(range(first, last)), columns=list(self.columns.values()))
                self._cache = (first, last, {k: table.column(c).to_numpy(zero_copy_only=False)
                                             for k, c in self.columns.items()})
            offset = self._group_starts[first]
            columns = {k: v[start - offset: stop - offset] for k, v in self._cache[2].items()}
        elif hasattr(self, "_table"):
            part = self._table.slice(start, stop - start)
            columns = {k: part.column(c).to_numpy(zero_copy_only=False) for k, c in self.columns.items()}
        else:
            part = self._fits[start:stop]
            columns = {k: np.asarray(part[c]) for k, c in self.columns.items()}
        return self._typed(columns)

    def read_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The id, ra, dec of rows `rows` (sorted, distinct)."""
        rows = np.asarray(rows, dtype=np.int64)
        if hasattr(self, "_parquet"):
            groups = np.searchsorted(self._group_starts, rows, side="right") - 1
            parts = []
            for group in np.unique(groups):
                table = self._parquet.read_row_group(int(group), columns=list(self.columns.values()))
                local = rows[groups == group] - self._group_starts[group]
                parts.append({k: table.column(c).to_numpy(zero_copy_only=False)[local] for k, c in self.columns.items()})
            columns = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in self.columns}
        elif hasattr(self, "_table"):
            part = self._table.take(rows)
            columns = {k: part.column(c).to_numpy(zero_copy_only=False) for k, c in self.columns.items()}
        else:
            part = self._fits[rows]
            columns = {k: np.asarray(part[c]) for k, c in self.columns.items()}
        return self._typed(columns)

    def _typed(self, columns: dict) -> dict[str, np.ndarray]:
        out = {"id": _strings(columns["id"]), "ra": np.asarray(columns["ra"], np.float64),
               "dec": np.asarray(columns["dec"], np.float64)}
        if "split" in columns:
            out["split"] = _strings(columns["split"])
        if "label" in columns:
            label = np.asarray(columns["label"])
            if label.dtype.kind == "f" and np.all(np.isfinite(label)) and np.all(label == np.round(label)):
                label = label.astype(np.int64)
            if label.dtype.kind not in "iub":
                raise InputError(f"{self.path}: column {self.columns['label']!r} holds {label.dtype} values; a label "
                                 "column holds integer class indices (0 non-lens, 1 lens for lens finding)")
            out["label"] = label.astype(np.int64)
        return out

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_cache"} | {"_cache": None}


@dataclass
class Tile:
    """One sky tile: a FITS image per band sharing one celestial WCS and shape."""

    name: str
    paths: list[Path]
    wcs: object
    shape: tuple[int, int]
    pixel_scale_arcsec: float


def group_tiles(files: list[Path], bands: list[str]) -> list[tuple[str, list[Path]]]:
    """Per-band FITS files NAME_<band>.fits grouped into tiles, bands in the given order; a tile missing a band is
    refused, naming it."""
    tiles: dict[str, dict[str, Path]] = {}
    for path in map(Path, files):
        if not _lower(path).endswith(FITS_SUFFIXES):
            raise InputError(f"{path}: a tile must be a FITS image (one file per band, NAME_<band>.fits)")
        key, band = split_band_name(path, bands)
        if band is None:
            raise InputError(f"{path}: name does not end in _<band> for any band of --bands {','.join(bands)}; name "
                             "each tile file NAME_<band>.fits")
        tiles.setdefault(key, {})[band] = path
    out = []
    for name, found in sorted(tiles.items()):
        missing = [b for b in bands if b not in found]
        if missing:
            raise InputError(f"{name}: tile file(s) missing for band(s) {', '.join(missing)} (expected "
                             f"{', '.join(f'{Path(name).name}_{b}.fits' for b in bands)})")
        out.append((name, [found[b] for b in bands]))
    return out


def _read_tile(name: str, paths: list[Path]) -> Tile:
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    wcs0, shape0 = None, None
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(path, memmap=True) as hdus:
                    hdu = next((h for h in hdus if h.is_image and h.data is not None and h.data.ndim == 2), None)
                    if hdu is None:
                        raise InputError(f"{path}: no 2-D image HDU; a tile is one band's coadd image")
                    wcs, shape = WCS(hdu.header).celestial, hdu.data.shape
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{path}: unreadable FITS tile ({type(err).__name__}: {err})") from None
        if not wcs.has_celestial or wcs.naxis != 2:
            raise InputError(f"{path}: no celestial WCS in the header; a tile needs CTYPE/CRVAL/CRPIX/CD (or CDELT) keys")
        if wcs0 is None:
            wcs0, shape0 = wcs, shape
        elif shape != shape0 or not np.allclose(wcs.wcs.crval, wcs0.wcs.crval) or not np.allclose(
                wcs.wcs.crpix, wcs0.wcs.crpix) or not np.allclose(wcs.pixel_scale_matrix, wcs0.pixel_scale_matrix):
            raise InputError(f"{path}: its shape or WCS differs from {paths[0].name}; the bands of a tile must be "
                             "resampled onto one pixel grid")
    scales = proj_plane_pixel_scales(wcs0) * 3600.0
    if not math.isclose(scales[0], scales[1], rel_tol=PIXEL_SCALE_TOLERANCE):
        raise InputError(f"{paths[0]}: pixels are not square ({scales[0]:.4f} x {scales[1]:.4f} arcsec); resample the tile")
    return Tile(name, list(paths), wcs0, tuple(shape0), float(scales.mean()))


def check_pixel_scale(found: float, expected: float, source: str, *, what: str) -> None:
    if not math.isclose(found, expected, rel_tol=PIXEL_SCALE_TOLERANCE):
        raise InputError(f"{source}: pixel scale {found:.4g} arcsec, but {what} expects {expected:.4g} arcsec (within "
                         f"{PIXEL_SCALE_TOLERANCE:.0%}); resample the tiles to {expected:.4g} arcsec/pixel, or score them "
                         "with a model trained at this scale")


class TileSource:
    """Cutouts of `size` x `size` pixels cut from per-band FITS tiles around each catalogue position. The object's
    pixel is the one holding its (ra, dec) (``floor(x + 0.5)`` in 0-based pixels); the cutout starts ``size // 2``
    pixels before it on each axis. Each object is cut from the first tile that holds its whole cutout, else from the
    first tile that holds its pixel: there the part off the tile is zero (``edge="pad"``, flagged with the padded
    share) or the object is rejected (``edge="skip"``). An object on no tile, or whose pixels are NaN, is rejected
    with the reason."""

    kind = "tiles"

    def __init__(self, tiles: list[tuple[str, list[Path]]], catalogue: Path, *, size: int, edge: str = "pad",
                 pixel_scale_arcsec: float | None = None, expected_by: str = "the model"):
        if edge not in EDGE_RULES:
            raise InputError(f"--edge {edge!r}: expected one of {', '.join(EDGE_RULES)}")
        if not tiles:
            raise InputError("no tiles: give the per-band FITS tile images (NAME_<band>.fits) with --bands")
        self.tiles = [_read_tile(name, paths) for name, paths in tiles]
        if pixel_scale_arcsec is not None:
            for tile in self.tiles:
                check_pixel_scale(tile.pixel_scale_arcsec, pixel_scale_arcsec, str(tile.paths[0]), what=expected_by)
        self.pixel_scale_arcsec = self.tiles[0].pixel_scale_arcsec
        self.catalogue = CatalogueTable(catalogue)
        self.n, self.channels, self.size, self.edge = self.catalogue.n, len(tiles[0][1]), int(size), edge
        self.has_position = True
        self._data: dict[int, list[np.ndarray]] = {}
        self._pid = None
        self.description = {"kind": "tiles", "catalogue": str(self.catalogue.path.resolve()), "rows": self.n,
                            "tiles": [[str(p.resolve()) for p in t.paths] for t in self.tiles],
                            "shape": [self.channels, self.size, self.size], "edge": edge}

    def __getstate__(self):
        return {**self.__dict__, "_data": {}, "_pid": None}

    def _planes(self, index: int) -> list[np.ndarray]:
        from astropy.io import fits

        if self._pid != os.getpid():
            self._data, self._pid = {}, os.getpid()
        if index not in self._data:
            planes = []
            for path in self.tiles[index].paths:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hdus = fits.open(path, memmap=True)  # kept open: the memory map reads pixels on demand
                planes.append(next(h for h in hdus if h.is_image and h.data is not None and h.data.ndim == 2).data)
            self._data[index] = planes
        return self._data[index]

    def locate(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tile index or -1, x0, y0, fully inside) of each position: the tile and the first column and row of its cutout."""
        n, half = len(ra), self.size // 2
        chosen, x0s, y0s = np.full(n, -1), np.zeros(n, np.int64), np.zeros(n, np.int64)
        inside_chosen = np.zeros(n, bool)
        for index, tile in enumerate(self.tiles):
            with warnings.catch_warnings(), np.errstate(invalid="ignore"):
                warnings.simplefilter("ignore")
                x, y = tile.wcs.world_to_pixel_values(ra, dec)
                back_ra, back_dec = tile.wcs.pixel_to_world_values(x, y)  # a position far off the tangent point
            with np.errstate(invalid="ignore"):  # projects onto the plane too: the round trip tells
                off = np.hypot((back_ra - ra + 180) % 360 - 180, back_dec - dec) * 3600 > tile.pixel_scale_arcsec
            cx, cy = np.floor(np.nan_to_num(x, nan=-1e9) + 0.5), np.floor(np.nan_to_num(y, nan=-1e9) + 0.5)
            height, width = tile.shape
            on_tile = ~off & np.isfinite(x) & np.isfinite(y) & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            x0, y0 = cx - half, cy - half
            inside = on_tile & (x0 >= 0) & (y0 >= 0) & (x0 + self.size <= width) & (y0 + self.size <= height)
            take = on_tile & ((chosen < 0) | (inside & ~inside_chosen))
            chosen[take], inside_chosen[take] = index, inside[take]
            x0s[take], y0s[take] = x0[take], y0[take]
        return chosen, x0s, y0s, inside_chosen

    def read(self, start: int, stop: int) -> Block:
        return self._cut(self.catalogue.read(start, stop), start, None)

    def read_rows(self, rows: np.ndarray) -> Block:
        """The cutouts of catalogue rows `rows` (sorted, distinct)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._cut(self.catalogue.read_rows(rows), int(rows[0]) if len(rows) else 0, rows)

    def _cut(self, rows: dict[str, np.ndarray], start: int, numbers: np.ndarray | None) -> Block:
        n, size = len(rows["id"]), self.size
        images = np.zeros((n, self.channels, size, size), np.float32)
        edge, padded, reasons = np.zeros(n, bool), np.zeros(n, np.float32), [""] * n
        chosen, x0s, y0s, inside = self.locate(rows["ra"], rows["dec"])
        whole = inside & (chosen >= 0)
        for index in np.unique(chosen[whole]):  # cutouts wholly on a tile: one gather per tile and band
            on = np.flatnonzero(whole & (chosen == index))
            for band, plane in enumerate(self._planes(int(index))):
                windows = np.lib.stride_tricks.sliding_window_view(plane, (size, size))
                images[on, band] = windows[y0s[on], x0s[on]]
        for i in np.flatnonzero(~whole):  # on no tile, or on a tile's edge: one at a time
            index = chosen[i]
            if index < 0:
                reasons[i] = f"(ra, dec) = ({rows['ra'][i]:.6f}, {rows['dec'][i]:.6f}) lies on no tile"
                continue
            height, width = self.tiles[index].shape
            x0, y0 = int(x0s[i]), int(y0s[i])
            xa, xb, ya, yb = max(x0, 0), min(x0 + size, width), max(y0, 0), min(y0 + size, height)
            if not inside[i]:
                share = 1.0 - (xb - xa) * (yb - ya) / size**2
                if self.edge == "skip":
                    reasons[i] = (f"on the edge of tile {Path(self.tiles[index].name).name}: {share:.0%} of the cutout "
                                  "is off the tile (--edge pad scores it zero-padded and flagged)")
                    continue
                edge[i], padded[i] = True, share
            for band, plane in enumerate(self._planes(index)):
                images[i, band, ya - y0: yb - y0, xa - x0: xb - x0] = plane[ya:yb, xa:xb]
        extra = {name: rows[name] for name in self.catalogue.extra_columns}
        return _reject_bad_pixels(Block(start, images, rows["id"], rows["ra"], rows["dec"], edge, padded, reasons,
                                        numbers, extra))


def write_cube(source, out: Path, *, chunk_rows: int = 4096, progress: bool = False,
               attrs: dict | None = None) -> tuple[int, list[tuple]]:
    """Write the cutouts of `source` that can be scored as a cube (`.h5`/`.hdf5` or `.zarr`, see `CubeSource`),
    block by block, atomically, with the catalogue's label and split columns when it has them (a labelled cube for
    training, `data.cubes`) and `attrs` as attributes; returns (rows written, [(id, ra, dec, reason)] of those
    rejected)."""
    extra = tuple(getattr(getattr(source, "catalogue", None), "extra_columns", ()))
    out = Path(out)
    if not is_cube(out):
        raise InputError(f"{out}: unsupported cube type; expected one of {', '.join(CUBE_SUFFIXES)}")
    shape = (source.channels, source.size, source.size)
    rejected: list[tuple] = []
    written = 0
    zarr_out = _lower(out).endswith(".zarr")
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if zarr_out:
            import zarr

            store = zarr.open_group(str(tmp), mode="w")
            arrays = {"images": store.create_array("images", shape=(0, *shape), chunks=(256, *shape), dtype="float32"),
                      "id": store.create_array("id", shape=(0,), chunks=(65536,), dtype=str),
                      **{k: store.create_array(k, shape=(0,), chunks=(65536,), dtype=t) for k, t in
                         (("ra", "float64"), ("dec", "float64"), ("edge", "bool"), ("padded_fraction", "float32"),
                          *((("label", "int64"),) if "label" in extra else ()),
                          *((("split", str),) if "split" in extra else ()))}}
        else:
            import h5py

            store = h5py.File(tmp, "w")
            arrays = {"images": store.create_dataset("images", shape=(0, *shape), maxshape=(None, *shape),
                                                     chunks=(min(256, max(source.n, 1)), *shape), dtype="float32"),
                      "id": store.create_dataset("id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True),
                      **{k: store.create_dataset(k, shape=(0,), maxshape=(None,), dtype=t, chunks=True) for k, t in
                         (("ra", "float64"), ("dec", "float64"), ("edge", "bool"), ("padded_fraction", "float32"),
                          *((("label", "int64"),) if "label" in extra else ()),
                          *((("split", h5py.string_dtype()),) if "split" in extra else ()))}}
        if source.pixel_scale_arcsec:
            store.attrs["pixel_scale_arcsec"] = float(source.pixel_scale_arcsec)
        for key, value in (attrs or {}).items():
            store.attrs[key] = value
        try:
            for start in range(0, source.n, chunk_rows):
                block = source.read(start, min(start + chunk_rows, source.n))
                good = np.array([not r for r in block.reasons], bool)
                rejected += [(block.ids[i], block.ra[i], block.dec[i], block.reasons[i]) for i in np.flatnonzero(~good)]
                values = {"images": block.images[good], "id": block.ids[good].astype(str), "ra": block.ra[good],
                          "dec": block.dec[good], "edge": block.edge[good], "padded_fraction": block.padded_fraction[good],
                          **{name: block.extra[name][good] for name in extra}}
                if "split" in values:
                    values["split"] = values["split"].astype(str)
                count = int(good.sum())
                for name, array in arrays.items():
                    array.resize((written + count, *array.shape[1:]))
                    array[written: written + count] = values[name]
                written += count
        finally:
            if not zarr_out:
                store.close()
        if zarr_out and out.exists():
            shutil.rmtree(out)  # a folder is not replaced by a rename: the old cube goes just before
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
    return written, rejected
