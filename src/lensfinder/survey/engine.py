"""`predict_survey`: score a cube or tiles + catalogue with Lightning's `Trainer.predict` on 1..N processes (the
training flags: --accelerator, --devices, --num-nodes, --strategy). The rows are cut into fixed chunks; each rank
writes one Parquet part per chunk, atomically, through a prediction writer, so a killed run started again with the
same command scores only the chunks whose part is missing. The parts are then merged into the ranked catalogue.

Two passes by default for lens finding (``tta="top"``): the first scores every row with one view; once every
first-pass part is written, rank 0 chooses the best-scored share (`select_rescore`: rescore.parquet, written once),
and the ranks re-score those rows with the 8 D4 views into rescore-NNNNNN.parquet parts (each 1/8 of a chunk's rows,
so a part costs what a first-pass part does), resumable like the first; the merge takes those rows from them."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ..data.layouts import atomic_path, write_text_atomic
from ..evaluate.inference import DEFAULT_RESCORE_MIN, DEFAULT_RESCORE_TOP, VIEWS, rescore_count, scoring_module, softmax, tta_plan, view_logits
from ..evaluate.shipped import shipped_weights
from ..shipped import named_weights
from ..metrics import log_odds
from ..train.run import load_model
from ..validation import InputError
from .merge import (CATALOGUE_SUFFIXES, RESCORE_SELECTION, MergeResult, merge_parts, part_name, ranked_blocks,
                    read_selection, rescore_name, scored_rows)
from .sources import CubeSource, TileSource, check_pixel_scale, group_tiles, is_cube, write_cube

# The writer gets each batch's rows from the batch itself, not from Lightning's sampler indices.
warnings.filterwarnings("ignore", message=r".*Couldn't infer the batch indices")

MANIFEST = "manifest.json"
PARTS_FORMAT = "lensfinder-survey-parts-v2"  # v2: the views column and the two-pass (rescore) parts
MAX_CHUNK_ROWS = 65536  # rows per Parquet part at most: the unit of resumption (10^8 objects -> ~1,500 parts)
DEFAULT_CHUNK_ROWS = None  # None: `auto_chunk_rows` of the source's rows


def auto_chunk_rows(n_rows: int) -> int:
    """Rows per part when none is given: about n / 256 (so that the ranks share out many parts evenly), rounded up to
    a multiple of 1,024, between 1,024 and MAX_CHUNK_ROWS. A function of the source alone, so a rerun on other
    devices resumes the same parts."""
    return min(MAX_CHUNK_ROWS, max(1024, -(-n_rows // 256 // 1024) * 1024))


def parts_dir_for(out: Path) -> Path:
    """Where the parts of catalogue `out` go by default: <out>.parts/ beside it."""
    return Path(out).with_name(f"{Path(out).name}.parts")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_source(inputs: list[Path], *, catalogue: Path | None = None, bands: list[str] | None = None,
                size: int | None = None, edge: str = "pad", pixel_scale_arcsec: float | None = None,
                expected_by: str = "the model"):
    """A `CubeSource` (one .h5/.hdf5/.zarr input) or a `TileSource` (per-band FITS tiles with `catalogue`)."""
    inputs = [Path(p) for p in inputs]
    if catalogue is None:
        if len(inputs) != 1 or not is_cube(inputs[0]):
            raise InputError(f"{', '.join(map(str, inputs))}: survey prediction reads one cube (.h5, .hdf5, .zarr), or "
                             "FITS tiles with --catalogue; folders of .npy / FITS cutouts go to the folder path")
        source = CubeSource(inputs[0])
        if pixel_scale_arcsec is not None and source.pixel_scale_arcsec is not None:
            check_pixel_scale(source.pixel_scale_arcsec, pixel_scale_arcsec, str(inputs[0]), what=expected_by)
        return source
    if not bands:
        raise InputError("tiles + --catalogue need --bands (e.g. g,r,i): the tile files are NAME_<band>.fits, one per band")
    if size is None:
        raise InputError("tiles + --catalogue need the cutout size (--size, or a model that gives it)")
    return TileSource(group_tiles(inputs, bands), Path(catalogue), size=size, edge=edge,
                      pixel_scale_arcsec=pixel_scale_arcsec, expected_by=expected_by)


def model_path(*, run: Path | None, task: str | None, preset: str | None = None, channels: int | None = None,
               size: int | None = None) -> Path:
    """The weights file that scores: a run folder's model.safetensors (or the file), else the shipped weights of
    `task` that take `channels` x `size` x `size` cutouts (and were trained on `preset`, when given)."""
    if run is not None:
        path = named_weights(run)
        return path / "model.safetensors" if path.is_dir() else path
    if task is None:
        raise InputError("say which model scores the cutouts: --run RUN_FOLDER, or --task TASK for the shipped weights")
    return shipped_weights(task, preset=preset, channels=channels, size=size)


def expected_pixel_scale(hparams, pixel_scale_arcsec: float | None) -> tuple[float | None, str]:
    """The pixel scale the model was trained at (its preset's), or the one given; and who expects it."""
    if pixel_scale_arcsec is not None:
        return float(pixel_scale_arcsec), "--pixel-scale"
    preset = hparams.get("preset")
    if preset is None:
        return None, "the model"
    return preset_pixel_scale(preset), f"the model (trained on preset {preset})"


def preset_pixel_scale(name: str) -> float:
    """The pixel scale of simulator preset `name`: read from its YAML file, which states it, so that predicting does
    not import the simulator (caustics, astropy.cosmology: 1-2 s); the merged preset when the file does not."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "simulate" / "presets" / f"{name}.yaml"
    if path.is_file():
        value = (yaml.safe_load(path.read_text()) or {}).get("pixel_scale_arcsec")
        if value is not None:
            return float(value)
    from ..simulate.presets import load_preset

    return float(load_preset(name)["pixel_scale_arcsec"])


@dataclass(frozen=True)
class Job:
    """One part to write: `name` (part-NNNNNN or rescore-NNNNNN) holding source rows `rows` (a range of a first-pass
    chunk, or the sorted rows a second pass re-scores), scored with `views` D4 views."""

    name: str
    rows: range | np.ndarray
    views: int


def first_pass_jobs(n_rows: int, chunk_rows: int, views: int) -> list[Job]:
    return [Job(part_name(c), range(c * chunk_rows, min((c + 1) * chunk_rows, n_rows)), views)
            for c in range(-(-n_rows // chunk_rows))]


def rescore_jobs(rows: np.ndarray, per_part: int) -> list[Job]:
    return [Job(rescore_name(c), rows[c * per_part:(c + 1) * per_part], VIEWS) for c in range(-(-len(rows) // per_part))]


class JobBatches(Dataset):
    """The batches of the jobs one rank runs: item i reads one batch of rows of one job from the source (a row range
    as one read; a second pass's scattered rows through `read_rows`). On 2 CPU cores reading in the scoring process
    is fastest (a reading thread or worker process only takes the cores from the network; measured); with spare
    cores (a GPU to feed), --num-workers N reads ahead in N processes."""

    def __init__(self, source, jobs: list[Job], *, batch_size: int):
        self.source = source
        self.items = []
        for job in jobs:
            starts = list(range(0, len(job.rows), batch_size))
            self.items += [(job, s, min(s + batch_size, len(job.rows)), s == starts[-1]) for s in starts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        job, start, stop, last = self.items[index]
        rows = job.rows[start:stop]
        block = self.source.read(rows.start, rows.stop) if isinstance(rows, range) else self.source.read_rows(rows)
        good = np.array([not r for r in block.reasons], bool)
        images = block.images if good.all() else block.images[good]
        return {"name": job.name, "views": job.views, "last": last, "good": good,
                "images": torch.from_numpy(np.ascontiguousarray(images)), "block": block}


def _as_is(item: dict) -> dict:
    return item


class SurveyData(L.LightningDataModule):
    """Shares the missing jobs (parts not written yet) between the ranks: rank r runs every world_size-th of them
    from r. Rank 0's list is broadcast, so every rank agrees even while another is already writing parts."""

    def __init__(self, source, parts: Path, jobs: list[Job], *, batch_size: int, num_workers: int):
        super().__init__()
        self.source, self.parts, self.jobs = source, parts, jobs
        self.batch_size, self.num_workers = batch_size, num_workers
        self.mine: list[Job] = []

    def setup(self, stage: str) -> None:
        missing = self.trainer.strategy.broadcast(missing_jobs(self.parts, self.jobs), src=0)
        self.mine = missing[self.trainer.global_rank::self.trainer.world_size]

    def predict_dataloader(self) -> DataLoader:
        dataset = JobBatches(self.source, self.mine, batch_size=self.batch_size)
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                          prefetch_factor=4 if self.num_workers else None, persistent_workers=False)


class Scorer(L.LightningModule):
    """Calibrated float64 log-space class scores (`inference.view_logits`, with the batch's 1 or 8 D4 views) of the
    cutouts of a batch that read."""

    allow_zero_length_dataloader_with_multiple_devices = True  # a rank may find no part left to write

    def __init__(self, module, *, prevalence: float | None):
        super().__init__()
        self.lens = scoring_module(module)
        self.prevalence = prevalence

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        if not len(images):
            return torch.zeros((0, self.lens.hparams.num_classes), dtype=torch.float64)
        images = images.to(self.device, non_blocking=True)
        return view_logits(self.lens, images, views=batch["views"], prevalence=self.prevalence).cpu()


class PartWriter(BasePredictionWriter):
    """Collects one job's rows and, at its last batch, writes its part atomically: the scored rows sorted by score
    (descending, float64), then the rejected rows with their reason and a null score."""

    def __init__(self, parts: Path, *, class_names: list[str], model: str, version: str):
        super().__init__(write_interval="batch")
        self.parts, self.class_names, self.model, self.version = parts, class_names, model, version
        self.pending: list[tuple[dict, np.ndarray]] = []
        self.written: dict[str, int] = {"part": 0, "rescore": 0}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        batch["block"].images = batch["images"] = None  # a job keeps its rows' metadata and scores, never pixels
        self.pending.append((batch, prediction.double().cpu().numpy()))
        if batch["last"]:
            write_part(self.parts / batch["name"], self.pending, class_names=self.class_names, views=batch["views"],
                       model=self.model, version=self.version)
            self.pending = []
            self.written[batch["name"].split("-")[0]] += 1


def write_part(path: Path, batches: list[tuple[dict, np.ndarray]], *, class_names: list[str], views: int, model: str,
               version: str) -> None:
    columns: dict[str, list] = {k: [] for k in ("row", "id", "ra", "dec", "edge", "padded_fraction", "reason")}
    logits = []
    k = len(class_names)
    for batch, batch_logits in batches:
        block, good = batch["block"], batch["good"]
        order = np.r_[np.flatnonzero(good), np.flatnonzero(~good)]  # the scored rows first, as the logits are
        columns["row"].append(block.row_numbers()[order])
        for name in ("ra", "dec", "edge", "padded_fraction"):
            columns[name].append(getattr(block, name)[order])
        columns["id"].append(block.ids[order])
        columns["reason"].append(np.array([block.reasons[i] or None for i in order], dtype=object))
        logits.append(np.concatenate([batch_logits, np.full((int((~good).sum()), k), np.nan)]))
    merged = {name: np.concatenate(v) for name, v in columns.items()}
    logits = np.concatenate(logits) if logits else np.zeros((0, k))
    scored = np.isfinite(logits[:, 0])
    n = len(logits)
    score = np.full(n, np.nan)
    probs = np.full(logits.shape, np.nan)
    if scored.any():
        score[scored] = log_odds(logits[scored], positive=1 if k == 2 else None)
        probs[scored] = softmax(logits[scored])
    order = np.r_[np.flatnonzero(scored)[np.lexsort((merged["row"][scored], -score[scored]))], np.flatnonzero(~scored)]
    unscored = ~scored[order]
    predicted = np.where(scored, np.nan_to_num(logits, nan=-np.inf).argmax(1), -1)[order]
    table = pa.table({
        "row": pa.array(merged["row"][order], pa.int64()),
        "id": pa.array(merged["id"][order].astype(str), pa.string()),
        "ra": pa.array(merged["ra"][order], pa.float64()),
        "dec": pa.array(merged["dec"][order], pa.float64()),
        "score": pa.array(score[order], pa.float64(), mask=unscored),
        **{f"p_{c}": pa.array(probs[order, j], pa.float64(), mask=unscored) for j, c in enumerate(class_names)},
        "predicted": pa.array(np.array(class_names, dtype=object)[np.maximum(predicted, 0)], pa.string(), mask=unscored),
        "edge": pa.array(merged["edge"][order], pa.bool_()),
        "padded_fraction": pa.array(merged["padded_fraction"][order], pa.float32()),
        "views": pa.array(np.full(n, views, np.int8), pa.int8()),
        "model": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([model])),
        "model_version": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([version])),
        "reason": pa.array(merged["reason"][order], pa.string()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def missing_jobs(parts: Path, jobs: list[Job]) -> list[Job]:
    """The jobs whose part is not written yet."""
    done = {p.name for p in Path(parts).glob("*.parquet")}
    return [job for job in jobs if job.name not in done]


def missing_chunks(parts: Path, n_chunks: int, shard: tuple[int, int] | None = None) -> list[int]:
    """The first-pass chunks (of this shard) whose part is not written yet."""
    done = {p.name for p in Path(parts).glob("part-*.parquet")}
    chunks = range(n_chunks) if shard is None else range(shard[0], n_chunks, shard[1])
    return [c for c in chunks if part_name(c) not in done]


def check_manifest(parts: Path, manifest: dict, *, write: bool) -> None:
    """Parts from an earlier run are kept only when they were made by the same run (source, model, options);
    anything else is refused by name. The first process writes the manifest of a new run."""
    path = Path(parts) / MANIFEST
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{path}: unreadable manifest; delete {parts} to start the run afresh") from None
        changed = sorted(k for k in set(saved) | set(manifest) if saved.get(k) != manifest.get(k))
        if changed:
            listed = "; ".join(f"{k}: parts {saved.get(k)!r}, now {manifest.get(k)!r}" for k in changed)
            raise InputError(f"{parts}: holds the parts of another run ({listed}); rerun with that run's settings to "
                             f"resume it, or pass another --parts (or delete {parts}) to start anew")
    elif write:
        write_text_atomic(path, json.dumps(manifest, indent=1))


def select_rescore(parts: Path, n_chunks: int, share: float, chunk_rows: int,
                   minimum: int = DEFAULT_RESCORE_MIN) -> tuple[np.ndarray, dict]:
    """Choose the rows of a two-pass run's second pass once the first pass is complete: the rescore_count(scored,
    share, minimum) best-scored rows over all parts (score descending, ties by row, as the catalogue ranks), written sorted by
    row to <parts>/rescore.parquet, atomically, with the record of the choice; memory holds those rows only. An
    existing selection (a resumed second pass) is read back, not chosen again."""
    found = read_selection(parts)
    if found is not None:
        return found
    paths = [Path(parts) / part_name(c) for c in range(n_chunks)]
    scored = sum(scored_rows(p) for p in paths)
    k = rescore_count(scored, share, minimum)
    rows, scores, taken = [], [], 0
    if k:
        for block in ranked_blocks(paths, columns=["row", "score"]):
            block = block.slice(0, k - taken)
            rows.append(block.column("row").to_numpy())
            scores.append(block.column("score").to_numpy())
            taken += block.num_rows
            if taken >= k:
                break
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    scores = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(rows, kind="stable")
    record = {"share": share, "minimum": int(minimum), "scored": int(scored), "k": int(k), "rows_per_part": max(1, chunk_rows // VIEWS),
              "views": VIEWS}
    table = pa.table({"row": pa.array(rows[order], pa.int64()), "score": pa.array(scores[order], pa.float64())})
    table = table.replace_schema_metadata({"lensfinder": json.dumps(record)})
    with atomic_path(Path(parts) / RESCORE_SELECTION) as tmp:
        pq.write_table(table, tmp)
    return rows[order], record


@dataclass(frozen=True)
class SurveyRun:
    """What `predict_survey` did: the parts folder, the first-pass chunks (all, or this shard's) and how many were
    written before and now, the rows the second pass re-scores and its parts written now, and the merged catalogue
    (None while parts are missing, e.g. with --shard)."""

    parts: Path
    chunks: int
    done_before: int
    written: int
    merged: MergeResult | None
    tta: str = "none"
    rescored: int = 0
    rescore_written: int = 0


def _trainer(*, accelerator: str, devices: str | int, num_nodes: int, strategy: str, precision: str, callbacks: list,
             progress: bool) -> L.Trainer:
    return L.Trainer(accelerator=accelerator, devices=int(devices) if str(devices).isdigit() else devices,
                     num_nodes=num_nodes, strategy=strategy, precision=precision, callbacks=callbacks, logger=False,
                     enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                     use_distributed_sampler=False, inference_mode=True)


def predict_survey(inputs: list[Path], out: Path, *, catalogue: Path | None = None, bands: list[str] | None = None,
                   run: Path | None = None, task: str | None = None, preset: str | None = None, batch_size: int = 512,
                   tta: bool | str | None = None, rescore_top: float = DEFAULT_RESCORE_TOP,
                   rescore_min: int = DEFAULT_RESCORE_MIN, chunk_rows: int | None = DEFAULT_CHUNK_ROWS, parts: Path | None = None,
                   accelerator: str = "auto", devices: str | int = "auto", num_nodes: int = 1, strategy: str = "auto",
                   precision: str = "32-true", num_workers: int = 0, prevalence: float | None = None,
                   edge: str = "pad", pixel_scale_arcsec: float | None = None, shard: tuple[int, int] | None = None,
                   top: int | None = None, progress: bool = False) -> SurveyRun:
    """Score a cube (`inputs` = one .h5/.hdf5/.zarr) or per-band FITS tiles with `catalogue`, writing Parquet parts
    into `parts` (default <out>.parts/) and, once every part is written, the ranked catalogue `out` (.parquet, .csv
    or .fits) with its rejected rows beside it (`merge.rejected_path_for`). Running the same call again after a
    crash scores only the missing parts; `shard=(k, n)` scores only the chunks k, k+n, ... (one job of n).

    `tta` (`inference.tta_plan`): "top", the lens finders' default, scores every row with one view, then re-scores
    the `rescore_top` share of the best-scored rows (default 1 %, at least `rescore_min`: 1,000) with the 8 D4 views, as resumable rescore parts;
    "all" (True) gives every row the 8 views, "none" (False) one. The catalogue's `views` column says which."""
    out = Path(out)
    if not str(out).lower().endswith(CATALOGUE_SUFFIXES):
        raise InputError(f"{out}: unsupported catalogue type; expected one of {', '.join(CATALOGUE_SUFFIXES)}")
    if batch_size < 1 or (chunk_rows is not None and chunk_rows < 1) or num_workers < 0:
        raise InputError(f"--batch-size {batch_size} / --chunk-size {chunk_rows} / --num-workers {num_workers}: "
                         "expected sizes >= 1 and a number of workers >= 0")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard {shard[0]}/{shard[1]}: expected 0 <= K < N in --shard K/N")
    if prevalence is not None and not 0 < prevalence < 1:
        raise InputError(f"--prevalence must be in (0, 1), got {prevalence}")
    cube = catalogue is None and len(inputs) == 1 and is_cube(inputs[0])
    peek = CubeSource(Path(inputs[0])) if cube else None
    weights = model_path(run=run, task=task, preset=preset, channels=peek.channels if peek else len(bands or []) or None,
                         size=peek.size if peek else None)
    module = load_model(weights)
    hp = module.hparams
    if task is not None and task != hp.task:
        raise InputError(f"--task {task} disagrees with --run {run}, a {hp.task} model; drop --task, or pass a run "
                         f"trained for {task}")
    if prevalence is not None and (hp.num_classes != 2 or not hp.get("calibration")):
        raise InputError("--prevalence needs a calibrated binary (lens-finding) model")
    mode, share = tta_plan(hp, tta, rescore_top, rescore_min)
    scale, expected_by = expected_pixel_scale(hp, pixel_scale_arcsec)
    source = open_source(inputs, catalogue=catalogue, bands=bands, size=hp.image_size, edge=edge,
                         pixel_scale_arcsec=scale, expected_by=expected_by)
    if (source.channels, source.size) != (hp.in_channels, hp.image_size):
        raise InputError(f"{inputs[0]}: cutouts of {source.channels} x {source.size} x {source.size}, but the model "
                         f"({weights}) takes {hp.in_channels} x {hp.image_size} x {hp.image_size}; pass a model for "
                         "these cutouts, or cut them to its size and bands")
    parts = Path(parts) if parts is not None else parts_dir_for(out)
    chunk_rows = int(chunk_rows) if chunk_rows is not None else auto_chunk_rows(source.n)
    n_chunks = -(-source.n // chunk_rows)
    version = _sha256(weights)[:16]
    manifest = {"format": PARTS_FORMAT, "source": source.description, "model": hp.model_name, "model_version": version,
                "class_names": list(hp.class_names), "tta": mode, "rescore_top": share if mode == "top" else None,
                "rescore_min": int(rescore_min) if mode == "top" else None,
                "prevalence": prevalence, "chunk_rows": chunk_rows, "rows": source.n, "chunks": n_chunks}
    writer = PartWriter(parts, class_names=list(hp.class_names), model=hp.model_name, version=version)
    trainer = _trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                       precision=precision, callbacks=[writer], progress=progress)
    chief = trainer.is_global_zero
    check_manifest(parts, manifest, write=chief)
    scorer = Scorer(module, prevalence=prevalence)
    jobs = first_pass_jobs(source.n, chunk_rows, VIEWS if mode == "all" else 1)
    mine = jobs if shard is None else jobs[shard[0]::shard[1]]
    missing = missing_jobs(parts, mine)
    if missing:
        data = SurveyData(source, parts, mine, batch_size=batch_size, num_workers=num_workers)
        trainer.predict(scorer, datamodule=data, return_predictions=False)
        trainer.strategy.barrier()
    rescored, merged = 0, None
    if shard is None and mode == "top":  # the second pass, once every first-pass part is written
        if chief:
            select_rescore(parts, n_chunks, share, chunk_rows, rescore_min)
        trainer.strategy.barrier()
        rows, record = read_selection(parts)
        rescored = len(rows)
        second = rescore_jobs(rows, int(record["rows_per_part"]))
        if missing_jobs(parts, second):
            data = SurveyData(source, parts, second, batch_size=batch_size, num_workers=num_workers)
            trainer.predict(scorer, datamodule=data, return_predictions=False)
            trainer.strategy.barrier()
    if chief and shard is None:
        merged = merge_parts(parts, out, top=top)
    elif chief and not missing_chunks(parts, n_chunks) and mode != "top":
        merged = merge_parts(parts, out, top=top)
    return SurveyRun(parts, len(mine), len(mine) - len(missing), writer.written["part"], merged, mode, rescored,
                     writer.written["rescore"])


@dataclass(frozen=True)
class CutoutCube:
    """What `make_cutouts` wrote: the cube, its row count, and the rejected rows' listing (None when none)."""

    path: Path
    rows: int
    rejected: int
    rejected_path: Path | None


def make_cutouts(tiles: list[Path], catalogue: Path, out: Path, *, bands: list[str], size: int | None = None,
                 preset: str | None = None, pixel_scale_arcsec: float | None = None, edge: str = "pad",
                 class_names: list[str] | None = None, progress: bool = False) -> CutoutCube:
    """Cut every catalogue object out of per-band FITS tiles into a cube (`out`: .h5, .hdf5 or .zarr) for reuse,
    checking the tiles' pixel scale against `preset` (or `pixel_scale_arcsec`); the rows that cannot be cut are
    listed with the reason in <out>.rejected.csv. A catalogue with `label` (and `split`) columns makes a labelled
    cube for `lensfinder train` (`data.cubes`): they are copied, with `class_names` and `preset` as attributes."""
    import csv

    expected, by = (float(pixel_scale_arcsec), "--pixel-scale") if pixel_scale_arcsec is not None else (None, "")
    if expected is None and preset is not None:
        from ..simulate.presets import load_preset

        values = load_preset(preset)
        expected, by = float(values["pixel_scale_arcsec"]), f"preset {preset}"
        size = size or int(values["num_pix"])
    source = open_source(tiles, catalogue=catalogue, bands=bands, size=size or 64, edge=edge,
                         pixel_scale_arcsec=expected, expected_by=by)
    attrs = {"preset": preset} if preset is not None else {}
    if class_names is not None:
        if "label" not in source.catalogue.extra_columns:
            raise InputError(f"--class-names names the classes of a label column, which {catalogue} does not have; "
                             "add a 'label' column (integer class indices) or drop --class-names")
        attrs["class_names"] = json.dumps(list(class_names))
    rows, rejected = write_cube(source, out, progress=progress, attrs=attrs)
    listing = Path(out).with_name(f"{Path(out).name}.rejected.csv")
    if rejected:
        with atomic_path(listing) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "ra", "dec", "reason"])
            writer.writerows((i, repr(float(r)), repr(float(d)), why) for i, r, d, why in rejected)
    else:
        listing.unlink(missing_ok=True)
    return CutoutCube(Path(out), rows, len(rejected), listing if rejected else None)
