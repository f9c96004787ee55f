"""Reading a ranked catalogue written by `lensfinder predict` (CSV, or a FITS / Parquet table with the same columns),
finding the cutout files each row points to, and the simulator's manifest row when the cutout is simulated."""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..validation import FITS_SUFFIXES, InputError

CATALOGUE_SUFFIXES = (".csv", ".fits", ".fit", ".parquet")
ID_COLUMNS = ("path", "id", "object")  # the object's key, first found wins (predict writes `path`)
BAND_ORDER = "ugrizy"  # one-file-per-band objects: bands sorted blue to red, then any others by name
MANIFEST = "manifest.csv"
MANIFEST_DEPTH = 4  # how many parent folders above a cutout are searched for a simulated set's manifest.csv


@dataclass(frozen=True)
class Candidate:
    """One catalogue row: its position in rank order, the object's key and the model's numbers."""

    index: int  # 0-based position in rank order
    object: str  # the key predict wrote (the cutout's path, or NAME for one FITS per band)
    rank: int
    score: float
    p_lens: float | None
    predicted: str


@dataclass
class Catalogue:
    """The candidates in rank order and where their cutouts are."""

    path: Path
    candidates: list[Candidate]
    by_object: dict[str, int] = field(default_factory=dict)
    _manifests: dict[Path, dict[str, dict[str, str]] | None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.by_object = {c.object: c.index for c in self.candidates}

    def __len__(self) -> int:
        return len(self.candidates)

    def get(self, object_id: str) -> Candidate | None:
        index = self.by_object.get(object_id)
        return None if index is None else self.candidates[index]

    def files(self, candidate: Candidate) -> list[Path]:
        """The cutout file(s) of a candidate: the path as written (absolute, or relative to the working folder or
        to the catalogue's folder), or NAME_<band>.fits files for an object keyed NAME. Missing: an `InputError`."""
        return cutout_files(candidate.object, self.path.parent)

    def metadata(self, candidate: Candidate) -> dict[str, str]:
        """The manifest.csv row of a simulated cutout (found in a parent folder), else {}."""
        try:
            files = self.files(candidate)
        except InputError:
            return {}
        cutout = files[0].resolve()
        for root in list(cutout.parents)[:MANIFEST_DEPTH]:
            rows = self._manifest(root / MANIFEST)
            if rows is None:
                continue
            row = rows.get(cutout.relative_to(root).as_posix())
            if row is not None:
                return row
        return {}

    def _manifest(self, path: Path) -> dict[str, dict[str, str]] | None:
        with self._lock:
            if path not in self._manifests:
                rows = None
                if path.is_file():
                    try:
                        with open(path, newline="") as handle:
                            rows = {row["path"]: row for row in csv.DictReader(handle) if row.get("path")}
                    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
                        rows = None  # not a simulator manifest: show no metadata rather than fail the page
                self._manifests[path] = rows
            return self._manifests[path]


def cutout_files(object_id: str, catalogue_dir: Path) -> list[Path]:
    path = Path(object_id)
    for candidate in ([path] if path.is_absolute() else [path, catalogue_dir / path]):
        if candidate.is_file():
            return [candidate]
    for folder in ([path.parent] if path.is_absolute() else [path.parent, catalogue_dir / path.parent]):
        bands = _band_files(folder, path.name)
        if bands:
            return bands
    raise InputError(f"{object_id}: cutout file not found (looked beside the working folder and the catalogue "
                     f"{catalogue_dir}); move the cutouts back or run predict again")


def _band_files(folder: Path, stem: str) -> list[Path]:
    if not folder.is_dir():
        return []
    found = {}
    for path in folder.glob(f"{stem}_*"):
        name = path.name
        suffix = next((s for s in FITS_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is not None and path.is_file():
            found[name[len(stem) + 1 : -len(suffix)]] = path
    return [found[band] for band in sorted(found, key=_band_key)]


def _band_key(band: str) -> tuple[int, str]:
    return (BAND_ORDER.index(band) if len(band) == 1 and band in BAND_ORDER else len(BAND_ORDER), band)


def band_names(files: list[Path], channels: int) -> list[str]:
    """Names of a cutout's bands: the suffixes of one-file-per-band FITS, else g, r, i for three planes."""
    if len(files) > 1:
        return [f.name.split("_")[-1].split(".")[0] for f in files]
    if channels == 3:
        return ["g", "r", "i"]
    return ["band"] if channels == 1 else [f"band {k}" for k in range(channels)]


def read_catalogue(path: Path) -> Catalogue:
    """The rows of a ranked catalogue in rank order; refuses a file without an id and a score column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: catalogue not found; write one with `lensfinder predict ... --out {path.name}`")
    name = path.name.lower()
    if not name.endswith(CATALOGUE_SUFFIXES):
        raise InputError(f"{path}: unsupported catalogue type; expected one of {', '.join(CATALOGUE_SUFFIXES)} "
                         "(as written by `lensfinder predict`)")
    columns = _read_columns(path)
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    if id_column is None or "score" not in columns:
        raise InputError(f"{path}: expected the columns of `lensfinder predict` (rank, path, ..., score), found "
                         f"{', '.join(columns) or 'none'}; pass the ranked catalogue that predict wrote")
    ids = [str(v) for v in columns[id_column]]
    n = len(ids)
    if n == 0:
        raise InputError(f"{path}: the catalogue has no rows; nothing to grade")
    scores = _floats(columns["score"], path, "score")
    ranks = _ints(columns["rank"], path) if "rank" in columns else None
    order = np.argsort(ranks, kind="stable") if ranks is not None else np.argsort(-scores, kind="stable")
    p_lens = _floats(columns["p_lens"], path, "p_lens") if "p_lens" in columns else None
    predicted = [str(v) for v in columns["predicted"]] if "predicted" in columns else [""] * n
    seen: set[str] = set()
    candidates = []
    for index, row in enumerate(order):
        if ids[row] in seen:
            raise InputError(f"{path}: object {ids[row]!r} appears more than once; an object is graded once per grader, "
                             "so each id must be unique")
        seen.add(ids[row])
        candidates.append(Candidate(index=index, object=ids[row], rank=int(ranks[row]) if ranks is not None else index + 1,
                                    score=float(scores[row]), p_lens=None if p_lens is None else float(p_lens[row]),
                                    predicted=predicted[row]))
    return Catalogue(path, candidates)


def _read_columns(path: Path) -> dict[str, list]:
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            with open(path, newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader, [])
                rows = list(reader)
            bad = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
            if bad is not None:
                raise InputError(f"{path}: line {bad + 2} has {len(rows[bad])} fields, the header {len(header)}; "
                                 "the file is truncated or not a predict catalogue")
            return {h.strip(): [row[k] for row in rows] for k, h in enumerate(header)}
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pydict()
        from astropy.table import Table

        table = Table.read(path)
        return {c: list(table[c]) for c in table.colnames}
    except InputError:
        raise
    except Exception as err:  # csv, pyarrow and astropy raise assorted errors on a corrupt file
        raise InputError(f"{path}: unreadable catalogue ({type(err).__name__}: {err})") from None


def _floats(values: list, path: Path, column: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: column {column!r} holds a value that is not a number") from None
    if column == "score" and np.isnan(out).any():
        raise InputError(f"{path}: column 'score' holds NaN; rank the catalogue again with `lensfinder predict`")
    return out


def _ints(values: list, path: Path) -> np.ndarray:
    try:
        return np.asarray([int(float(v)) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: column 'rank' holds a value that is not a whole number") from None
