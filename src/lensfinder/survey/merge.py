"""`merge_parts`: the Parquet parts of a survey run in, the catalogue ranked by float64 score out (Parquet, CSV or a
FITS table; optionally only the top K), plus the rejected rows with their reasons beside it.

Two-pass runs (``tta: top`` in the manifest) also hold `rescore.parquet`, the rows of the best-scored share that the
second pass re-scored with the 8 D4 views, and their rescore-NNNNNN.parquet parts: those rows are taken from the
rescore parts (``views`` = 8) instead of the first-pass parts (``views`` = 1); a row whose second read failed keeps
its first-pass score.

Memory stays flat in the number of objects: every part is already sorted by score (descending), so the parts are
merged k ways, block by block. Each part is read in batches; all buffered rows scoring at least the largest of the
buffers' last (smallest) scores can be emitted, because no row still unread in any part scores above it. Each such
block is sorted with numpy (ties by input row) and appended to the output through a streaming writer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..validation import InputError

CATALOGUE_SUFFIXES = (".parquet", ".csv", ".fits")
MERGE_MEMORY_ROWS = 1 << 20  # rows buffered over all parts together while merging (~150 MB at most)
MAX_OPEN_PARTS = 512  # parts one merge reads at once; more are merged in rounds, through sorted temporary runs
REJECTED_COLUMNS = ("row", "id", "ra", "dec", "reason")
RESCORE_SELECTION = "rescore.parquet"  # the rows the second pass re-scores (row, first-pass score), sorted by row


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def rescore_name(chunk: int) -> str:
    return f"rescore-{chunk:06d}.parquet"


def read_selection(parts: Path) -> tuple[np.ndarray, dict] | None:
    """The rows of a two-pass run's re-scored share (sorted) and the selection's record (share, scored, k,
    rows_per_part), or None before the first pass has chosen them."""
    path = Path(parts) / RESCORE_SELECTION
    if not path.is_file():
        return None
    table = pq.read_table(path)
    record = json.loads((table.schema.metadata or {}).get(b"lensfinder", b"{}"))
    return table.column("row").to_numpy(), record


def rescore_paths(parts: Path, record: dict) -> list[Path]:
    per_part = int(record["rows_per_part"])
    return [Path(parts) / rescore_name(c) for c in range(-(-int(record["k"]) // per_part))]


def rejected_path_for(out: Path) -> Path:
    """Where the rows a catalogue left out are listed: <name>.rejected<suffix> beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rejected{out.suffix}")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    rows: int
    rejected: int
    rejected_path: Path | None

    def __fspath__(self) -> str:
        return str(self.path)


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns (model, model_version) as plain strings: the parts' dictionaries differ."""
    fields = [pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in table.schema]
    return table.cast(pa.schema(fields))


class _Part:
    """One part read in batches of its scored rows (they come first, sorted by score, descending), less the rows
    in `exclude` (sorted; the rows a second pass re-scored)."""

    def __init__(self, path: Path, batch_rows: int, *, columns: list[str] | None = None,
                 exclude: np.ndarray | None = None):
        self.batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        self.table, self.scores = None, np.zeros(0)
        self.exclude = exclude if exclude is not None and len(exclude) else None

    def refill(self) -> bool:
        for batch in self.batches:
            table = pa.Table.from_batches([batch])
            keep = table.column("score").is_valid().to_numpy(zero_copy_only=False)
            if self.exclude is not None:
                rows = table.column("row").to_numpy()
                at = np.minimum(np.searchsorted(self.exclude, rows), len(self.exclude) - 1)
                keep &= self.exclude[at] != rows
            table = _plain(table.filter(pa.array(keep)))
            if table.num_rows:
                self.table, self.scores = table, table.column("score").to_numpy()
                return True
        return False

    def take_at_least(self, threshold: float) -> pa.Table:
        count = int(np.searchsorted(-self.scores, -threshold, side="right"))
        taken = self.table.slice(0, count)
        self.table, self.scores = self.table.slice(count), self.scores[count:]
        return taken


class _FitsWriter:
    """A FITS binary table streamed row block by row block: the header is written for `n_rows` up front."""

    def __init__(self, path: Path, schema: pa.Schema, n_rows: int, widths: dict[str, int]):
        from astropy.io import fits

        self.handle = open(path, "wb")
        self.dtype, columns = [], []
        for f in schema:
            if pa.types.is_string(f.type):
                width = max(1, widths.get(f.name, 1))
                code, dt = f"{width}A", f"S{width}"
            elif pa.types.is_boolean(f.type):
                code, dt = "L", "i1"
            elif pa.types.is_float32(f.type):
                code, dt = "E", ">f4"
            elif pa.types.is_floating(f.type):
                code, dt = "D", ">f8"
            else:
                code, dt = "K", ">i8"
            columns.append(fits.Column(name=f.name, format=code))
            self.dtype.append((f.name, dt))
        header = fits.BinTableHDU.from_columns(columns, nrows=0).header
        header["NAXIS2"] = n_rows
        self.handle.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        self.handle.write(header.tostring().encode("ascii"))
        self.bytes = 0

    def write_table(self, table: pa.Table) -> None:
        records = np.zeros(table.num_rows, dtype=self.dtype)
        for name, dt in self.dtype:
            values = table.column(name).to_numpy(zero_copy_only=False)
            if dt == "i1":
                records[name] = np.where(values.astype(bool), ord("T"), ord("F"))
            elif dt.startswith("S"):
                records[name] = np.array([("" if v is None else v).encode() for v in values], dtype=dt)
            else:
                records[name] = values
        data = records.tobytes()
        self.handle.write(data)
        self.bytes += len(data)

    def close(self) -> None:
        self.handle.write(b"\0" * (-self.bytes % 2880))
        self.handle.close()


def _writer(path: Path, schema: pa.Schema, n_rows: int, widths: dict[str, int]):
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.ParquetWriter(path, schema)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.CSVWriter(path, schema)  # float64 written with the digits that round-trip it
    return _FitsWriter(path, schema, n_rows, widths)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _scored_counts(paths: list[Path]) -> tuple[int, dict[str, int]]:
    """Scored rows over all parts, and the longest value of each string column (a FITS table's widths)."""
    total, widths = 0, {}
    for path in paths:
        table = _plain(pq.read_table(path, columns=["score", "id", "predicted", "model", "model_version"]))
        total += table.num_rows - table.column("score").null_count
        for name in ("id", "predicted", "model", "model_version"):
            longest = pc.max(pc.binary_length(pc.cast(table.column(name), pa.binary()))).as_py() or 1
            widths[name] = max(widths.get(name, 1), longest)
    return total, widths


def scored_rows(path: Path) -> int:
    """The rows of a part with a score, from its metadata (null counts) when written, else from its score column."""
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.to_arrow_schema().get_field_index("score")
    total = 0
    for group in range(meta.num_row_groups):
        column = meta.row_group(group).column(index)
        stats = column.statistics
        if stats is None or not stats.has_null_count:
            column = pq.read_table(path, columns=["score"]).column("score")
            return len(column) - column.null_count
        total += meta.row_group(group).num_rows - stats.null_count
    return total


def open_parts_limit() -> int:
    """How many parts one merge reads at once: MAX_OPEN_PARTS, or fewer when this process may open fewer files
    (each part read holds its file open; half the soft limit, less a margin)."""
    try:
        import resource
    except ImportError:  # no file-descriptor limits to read on this platform
        return MAX_OPEN_PARTS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft < 0:
        return MAX_OPEN_PARTS
    return max(2, min(MAX_OPEN_PARTS, soft // 2 - 32))


def ranked_blocks(paths: list[Path], *, columns: list[str] | None = None, exclude: np.ndarray | None = None,
                  replacements: list[Path] = (), memory_rows: int = MERGE_MEMORY_ROWS) -> Iterator[pa.Table]:
    """The scored rows of `paths` (parts sorted by score, descending) less the rows in `exclude`, and those of
    `replacements` (the rescore parts, whose rows `exclude` lists), in blocks in rank order: score descending, ties
    by row. Memory: `memory_rows` rows over all parts together. More parts than `open_parts_limit()` are merged in
    groups into sorted runs (temporary Parquet files beside the parts), which are then merged in turn."""
    streams = [(Path(p), exclude) for p in paths] + [(Path(p), None) for p in replacements]
    limit = open_parts_limit()
    if len(streams) <= limit:
        yield from _ranked(streams, columns, memory_rows)
        return
    import tempfile

    with tempfile.TemporaryDirectory(dir=streams[0][0].parent, prefix=".merge-") as scratch:
        runs = []
        for start in range(0, len(streams), limit):
            run, writer = Path(scratch) / f"run-{len(runs):06d}.parquet", None
            for block in _ranked(streams[start:start + limit], columns, memory_rows):
                writer = writer or pq.ParquetWriter(run, block.schema)
                writer.write_table(block)
            if writer is not None:
                writer.close()
                runs.append(run)
        yield from ranked_blocks(runs, memory_rows=memory_rows)


def _ranked(streams: list[tuple[Path, np.ndarray | None]], columns: list[str] | None,
            memory_rows: int) -> Iterator[pa.Table]:
    batch_rows = max(256, memory_rows // max(len(streams), 1))
    buffers = [_Part(p, batch_rows, columns=columns, exclude=excluded) for p, excluded in streams]
    active = [b for b in buffers if b.refill()]
    while active:
        threshold = max(b.scores[-1] for b in active)  # no unread row of any part scores above it
        block = pa.concat_tables([b.take_at_least(threshold) for b in active])
        order = np.lexsort((block.column("row").to_numpy(), -block.column("score").to_numpy()))
        yield block.take(pa.array(order))
        active = [b for b in active if len(b.scores) or b.refill()]


def _streams(parts: Path, manifest: dict) -> tuple[list[Path], list[Path], np.ndarray | None]:
    """The first-pass parts, the rescore parts, and the rows those re-scored (to leave out of the first)."""
    paths = [parts / part_name(chunk) for chunk in range(manifest["chunks"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{parts}: {len(missing)} of {len(paths)} chunk(s) are not scored yet (first: {missing[0]}); "
                         "run the same `lensfinder predict` command again (it scores only the missing chunks), or the "
                         "--shard jobs that have not finished, then merge")
    if manifest.get("tta") != "top":
        return paths, [], None
    selection = read_selection(parts)
    rescored = rescore_paths(parts, selection[1]) if selection is not None else []
    if selection is None or not all(p.is_file() for p in rescored):
        share = manifest.get("rescore_top")
        raise InputError(f"{parts}: the best-scored {share:.4g} share is not re-scored with the 8 D4 views yet; run the "
                         "same `lensfinder predict` command again without --shard (it re-scores them, resuming where it "
                         "stopped, and merges)")
    exclude = [pq.read_table(p, columns=["row", "score"]) for p in rescored]
    rows = [t.filter(pc.is_valid(t.column("score"))).column("row").to_numpy() for t in exclude]
    return paths, rescored, np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def merge_parts(parts: Path, out: Path, *, top: int | None = None, memory_rows: int = MERGE_MEMORY_ROWS) -> MergeResult:
    """Write `out` (.parquet, .csv or .fits): the scored rows of every part in `parts`, ranked by score (float64,
    descending; rank 1 first), keyed by id; `top`: only the first `top` rows. The rows that could not be scored go
    to `rejected_path_for(out)` (row, id, ra, dec, reason), in the same format. Every chunk of the run must be
    scored (and, in a two-pass run, every re-scored one): a missing part is an `InputError` that says how to finish
    the run."""
    parts, out = Path(parts), Path(out)
    if out.suffix.lower() not in CATALOGUE_SUFFIXES:
        raise InputError(f"{out}: unsupported catalogue type; expected one of {', '.join(CATALOGUE_SUFFIXES)}")
    if top is not None and top < 1:
        raise InputError(f"--top {top}: expected a number of rows >= 1")
    manifest_path = parts / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{parts}: no manifest.json; expected the parts folder of a `lensfinder predict` survey run")
    manifest = json.loads(manifest_path.read_text())
    paths, rescored, exclude = _streams(parts, manifest)
    if out.suffix.lower() == ".fits":
        total, widths = _scored_counts(paths)  # re-scored rows replace first-pass rows one for one
        widths = {k: max(v, _scored_counts(rescored)[1].get(k, 1)) for k, v in widths.items()} if rescored else widths
    else:
        total, widths = 0, {}
    n_out = min(total, top) if top is not None else total
    schema, writer, written, tmp = None, None, 0, _tmp(out)
    try:
        for block in ranked_blocks(paths, exclude=exclude, replacements=rescored, memory_rows=memory_rows):
            if top is not None:
                block = block.slice(0, top - written)
            ranks = pa.array(np.arange(written + 1, written + 1 + block.num_rows), pa.int64())
            block = block.drop_columns(["reason"]).add_column(0, "rank", ranks)
            block = block.select(["rank", "id", "ra", "dec", "score",
                                  *[c for c in block.column_names if c not in ("rank", "id", "ra", "dec", "score", "row")],
                                  "row"])
            if writer is None:
                schema = block.schema
                writer = _writer(tmp, schema, n_out, widths)
            writer.write_table(block)
            written += block.num_rows
            if top is not None and written >= top:
                break
        if writer is None:
            raise InputError(f"{parts}: no row could be scored; see why in the parts' reason column (or the rejected "
                             "table)")
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    rejected_path, rejected = _write_rejected(paths, rejected_path_for(out))
    return MergeResult(out, written, rejected, rejected_path)


def _write_rejected(paths: list[Path], path: Path) -> tuple[Path | None, int]:
    """The rows the parts could not score, part by part, in the catalogue's format; no file when there are none
    (and an old one, which would mislead, is removed)."""
    tmp, writer, count = _tmp(path), None, 0
    reasons = [pq.read_table(p, columns=["reason"]).column("reason") for p in paths]
    total = sum(len(r) - r.null_count for r in reasons)
    try:
        for part, reason in zip(paths, reasons):
            if len(reason) == reason.null_count:
                continue
            table = pq.read_table(part, columns=list(REJECTED_COLUMNS))
            table = table.filter(pc.is_valid(table.column("reason")))
            if writer is None:
                writer = _writer(tmp, table.schema, total, {"id": 256, "reason": 512})
            if path.suffix.lower() == ".fits":
                table = table.set_column(4, "reason", pc.utf8_slice_codeunits(table.column("reason"), 0, 512))
            writer.write_table(table)
            count += table.num_rows
        if writer is None:
            path.unlink(missing_ok=True)
            return None, 0
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, count
