"""Training from labelled cutout cubes (HDF5 or Zarr), read in blocks, never packed into a cache or held whole.

A labelled cube is the cube `lensfinder cutouts` writes (`images` (N, C, H, W), `id` (N,), optionally `ra`, `dec`,
`edge`, `padded_fraction` and the attribute `pixel_scale_arcsec`; see `survey.sources.CubeSource`) plus

- `label` (N,): integers, the index of each cutout's class in `class_names`;
- the attribute `class_names`: the class names in label order (a list of strings, or one JSON-encoded string);
  default the task's, ``["nonlens", "lens"]`` for lens finding (which needs exactly those) and ``["no", "sphere",
  "vort"]`` for substructure;
- optionally `split` (N,): strings train | val | test (valid / validation for val). Without it (or without val
  rows) a stratified `val_fraction` of the training rows, seeded, is the validation split, as for a folder without
  val/; `test_fraction` holds out a test split the same way;
- optionally the attribute `preset`: the simulator preset the cutouts follow (the trained model records it, and
  `lensfinder predict` checks a cube's or tiles' pixel scale against it).

`--data` is one such cube, or a folder of them (every .h5 / .hdf5 / .zarr directly inside, in name order: shards of
one data set, with the same cutout shape and class names).

Random access in blocks: the rows are read `BLOCK_ROWS` at a time (one contiguous read). An epoch draws its indices as
the folder path does (`EpochSampler`: a permutation, or balanced draws with replacement; a function of (seed,
epoch)), then orders them so that the draws of each block come together, blocks in a random order, and shuffles
them within windows of `WINDOW_BLOCKS` blocks: each block is read once per epoch and a batch mixes the rows of about
`WINDOW_BLOCKS` blocks from anywhere in the cube. Each process holds a few blocks (`CACHE_BLOCKS`) at a time."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..validation import InputError
from .layouts import LENSFINDING_CLASSES, SPLIT_ALIASES, SUBSTRUCTURE_CLASS_ORDER, check_task, stratified_split

BLOCK_ROWS = 256  # rows read at once: the unit of random access (48 MB of 3 x 64 x 64 float32 cutouts)
WINDOW_BLOCKS = 8  # blocks whose draws are shuffled together: a batch mixes rows of ~8 random places of the cube
CACHE_BLOCKS = WINDOW_BLOCKS + 2  # blocks a process holds at a time
SPLITS = ("train", "val", "test")
LABEL, SPLIT = "label", "split"


def _cube_suffix(path: Path) -> bool:
    from .cutouts import is_cube

    return is_cube(path)


def cube_files(path: Path) -> list[Path] | None:
    """The cube shards `path` names: itself when it is a cube, the cubes directly inside when it is a folder that
    holds cubes and no other folders (a folder layout has class or split folders); None otherwise."""
    path = Path(path)
    if _cube_suffix(path):
        return [path]
    if not path.is_dir():
        return None
    children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    cubes = [p for p in children if _cube_suffix(p)]
    if cubes and not any(p.is_dir() and not _cube_suffix(p) for p in children):
        return cubes
    return None


def is_cube_data(path: Path | str) -> bool:
    """Whether a training --data names labelled cubes (one cube, or a folder of cube shards)."""
    return cube_files(Path(path)) is not None


def _attribute_list(value, path: Path, name: str) -> list[str]:
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"{path}: attribute {name!r} is {text!r}; expected a list of class names, e.g. "
                             '["nonlens", "lens"] (or its JSON text)') from None
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(np.asarray(value, dtype=object))]
    return values


class LabelledCubes:
    """The shards of a labelled cube data set, checked at the boundary: shapes, labels, class names, splits. Holds
    the labels and split of every row (a few bytes a row), never the pixels."""

    def __init__(self, path: Path, task: str):
        from .cutouts import CubeSource, strings as _strings

        check_task(task)
        files = cube_files(Path(path))
        if files is None:
            raise InputError(f"{path}: not a labelled cube (.h5, .hdf5, .zarr) or a folder of them")
        self.path, self.task = Path(path), task
        self.shards = [CubeSource(f) for f in files]
        first = self.shards[0]
        default = list(LENSFINDING_CLASSES if task == "lensfinding" else SUBSTRUCTURE_CLASS_ORDER)
        labels, splits, class_names, presets = [], [], None, set()
        for shard in self.shards:
            store = shard._store()
            where = shard.path
            if (shard.channels, shard.size) != (first.channels, first.size):
                raise InputError(f"{where}: cutouts of {shard.channels} x {shard.size} x {shard.size}, but {first.path} "
                                 f"holds {first.channels} x {first.size} x {first.size}; the shards of a data set share "
                                 "one cutout shape")
            attrs = dict(store.attrs)
            names = _attribute_list(attrs["class_names"], where, "class_names") if "class_names" in attrs else default
            if len(names) < 2 or len(set(names)) != len(names):
                raise InputError(f"{where}: class_names {names}: expected two or more distinct names, in label order")
            if task == "lensfinding" and names != list(LENSFINDING_CLASSES):
                raise InputError(f"{where}: class_names {names}; lens finding needs ['nonlens', 'lens'] (label 0 a "
                                 "non-lens, 1 a lens): relabel the cube, or train --task substructure for other classes")
            if class_names is not None and names != class_names:
                raise InputError(f"{where}: class_names {names}, but {self.shards[0].path} has {class_names}; the "
                                 "shards of a data set share one class list")
            class_names = names
            if "preset" in attrs:
                presets.add(str(attrs["preset"]))
            if LABEL not in store:
                raise InputError(f"{where}: no '{LABEL}' array; a labelled cube holds '{LABEL}' ({shard.n},), the index "
                                 f"of each cutout's class in class_names {names} (write it beside 'images' and 'id')")
            label = np.asarray(store[LABEL][:])
            if label.shape != (shard.n,):
                raise InputError(f"{where}: '{LABEL}' has shape {label.shape}, expected ({shard.n},) like the first "
                                 "axis of 'images'")
            if label.dtype.kind not in "iub":
                raise InputError(f"{where}: '{LABEL}' holds {label.dtype} values; expected integer class indices "
                                 f"0..{len(names) - 1} into class_names {names}")
            bad = np.flatnonzero((label < 0) | (label >= len(names)))
            if len(bad):
                raise InputError(f"{where}: '{LABEL}' of row {bad[0]} is {label[bad[0]]}, outside 0..{len(names) - 1} "
                                 f"(class_names {names}); {len(bad)} row(s) are out of range")
            labels.append(label.astype(np.int64))
            if SPLIT in store:
                raw = _strings(store[SPLIT][:])
                if raw.shape != (shard.n,):
                    raise InputError(f"{where}: '{SPLIT}' has shape {raw.shape}, expected ({shard.n},)")
                known = {name: SPLIT_ALIASES.get(name.lower()) for name in set(raw)}
                unknown = sorted(name for name, split in known.items() if split is None)
                if unknown:
                    raise InputError(f"{where}: '{SPLIT}' holds {unknown[0]!r}; expected train, val (valid, validation) "
                                     "or test")
                splits.append(np.array([SPLITS.index(known[v]) for v in raw], np.int8))
            else:
                splits.append(np.zeros(shard.n, np.int8))
        if len(presets) > 1:
            raise InputError(f"{path}: the shards name different presets ({', '.join(sorted(presets))})")
        self.class_names = class_names
        self.labels, self.split = np.concatenate(labels), np.concatenate(splits)
        self.offsets = np.concatenate([[0], np.cumsum([s.n for s in self.shards])]).astype(np.int64)
        self.preset = presets.pop() if presets else None
        self.shape = (first.channels, first.size, first.size)
        self.seeded: dict = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def held_out(self, *, val_fraction: float, seed: int, test_fraction: float = 0.0) -> dict[str, np.ndarray]:
        """The rows (sorted) of train, val and, when there is one, test: the split column's; without val rows a
        stratified `val_fraction` of train (seeded), and with `test_fraction` > 0 and no test rows a stratified
        `test_fraction` of train first, as `layouts.held_out_listings` does for folders."""
        if not 0 <= test_fraction < 1:
            raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
        rows = {name: np.flatnonzero(self.split == code) for code, name in enumerate(SPLITS)}
        if not len(rows["train"]):
            raise InputError(f"{self.path}: no training rows (its '{SPLIT}' column names none 'train')")
        self.seeded = {}
        if test_fraction > 0 and not len(rows["test"]):
            keep, test = stratified_split(self.labels[rows["train"]], val_fraction=test_fraction, seed=seed + 1)
            rows["test"], rows["train"] = rows["train"][test], rows["train"][keep]
            self.seeded.update(test_fraction=test_fraction, test=rows["test"])
        if not len(rows["val"]):
            keep, val = stratified_split(self.labels[rows["train"]], val_fraction=val_fraction, seed=seed)
            rows["val"], rows["train"] = rows["train"][val], rows["train"][keep]
            self.seeded.update(val_fraction=val_fraction, val=rows["val"])
        for name in ("train", "val"):
            present = np.bincount(self.labels[rows[name]], minlength=len(self.class_names))
            if (present == 0).any():
                missing = [c for c, n in zip(self.class_names, present) if n == 0]
                raise InputError(f"{self.path}: the {name} split holds no {', '.join(missing)} cutout(s) "
                                 f"({dict(zip(self.class_names, present.tolist()))}); every class needs examples in "
                                 "train and val")
        return {name: r for name, r in rows.items() if len(r)}

    def split_record(self, seed: int) -> dict:
        """What `held_out` drew (split.json): the shards and, per seeded split, the rows it holds (row numbers over
        the shards in order)."""
        record = {"seed": seed, "shards": [str(s.path) for s in self.shards], "rows": [int(s.n) for s in self.shards]}
        for name in ("val", "test"):
            if name in self.seeded:
                record[f"{name}_fraction"] = self.seeded[f"{name}_fraction"]
                record[f"{name}_rows"] = self.seeded[name].tolist()
        return record

    def rows(self, rows: np.ndarray) -> "CubeRows":
        return CubeRows(self, rows)


class CubeRows:
    """Rows `rows` (sorted) of labelled cubes, indexed like an (n, C, H, W) float32 array (`images[i]`,
    `images[a:b]`, `take(positions)`), read a block at a time and holding at most `CACHE_BLOCKS` blocks. NaN or
    infinite pixels stop training with an `InputError` naming the shard and row."""

    def __init__(self, cubes: LabelledCubes, rows: np.ndarray, *, block_rows: int = BLOCK_ROWS,
                 cache_blocks: int = CACHE_BLOCKS):
        self.shards, self.offsets = cubes.shards, cubes.offsets
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = cubes.labels[self.rows]
        self.shape = (len(self.rows), *cubes.shape)
        self.dtype = np.dtype(np.float32)
        self.block_rows, self.cache_blocks = int(block_rows), int(cache_blocks)
        shard = np.searchsorted(self.offsets, self.rows, side="right") - 1
        local = self.rows - self.offsets[shard]
        base = np.concatenate([[0], np.cumsum([math.ceil(s.n / self.block_rows) for s in self.shards])])
        self.blocks = (base[shard] + local // self.block_rows).astype(np.int64)  # the block of each row
        self._base = base
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reads = 0  # blocks read (by this process)

    def __getstate__(self):
        return {**self.__dict__, "_cache": OrderedDict()}

    def __len__(self) -> int:
        return len(self.rows)

    def _block(self, block: int) -> np.ndarray:
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        index = int(np.searchsorted(self._base, block, side="right")) - 1
        shard = self.shards[index]
        start = (block - int(self._base[index])) * self.block_rows
        stop = min(start + self.block_rows, shard.n)
        try:
            images = np.asarray(shard._store()["images"][start:stop], dtype=np.float32)
        except Exception as err:  # a corrupt chunk: training cannot leave rows out silently
            raise InputError(f"{shard.path}: rows {start}-{stop - 1} are unreadable ({type(err).__name__}: {err}); "
                             "repair or rewrite the cube") from None
        finite = np.isfinite(images).reshape(len(images), -1).all(1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise InputError(f"{shard.path}: row {bad} holds NaN or infinite pixels; clean or drop the cutouts with "
                             f"masked pixels before training ({int((~finite).sum())} such row(s) in rows "
                             f"{start}-{stop - 1})")
        self.reads += 1
        self._cache[block] = images
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return images

    def take(self, positions) -> np.ndarray:
        """The images at `positions` (into these rows), in that order, as one float32 array."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.shape[1:]), np.float32)
        blocks = self.blocks[positions]
        for block in dict.fromkeys(blocks.tolist()):  # in order of first use
            where = np.flatnonzero(blocks == block)
            index = int(np.searchsorted(self._base, block, side="right")) - 1
            start = self.offsets[index] + (block - self._base[index]) * self.block_rows
            out[where] = self._block(block)[self.rows[positions[where]] - start]
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        if isinstance(index, (int, np.integer)):
            return self.take([int(index)])[0]
        return self.take(index)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("CubeRows is read in blocks: index it (rows[a:b], rows.take(positions)), do not convert it whole")


class CubeDataset(Dataset):
    """(image, label) items of `CubeRows` for a map-style loader (validation): a batch is read through
    `__getitems__`, a block at a time."""

    def __init__(self, rows: CubeRows):
        self.images = rows
        self.labels = torch.as_tensor(rows.labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.images[int(index)]), self.labels[index]

    def __getitems__(self, indices: list[int]):
        images = torch.from_numpy(self.images.take(indices))
        return [(images[i], self.labels[j]) for i, j in enumerate(indices)]


def epoch_order(rows: CubeRows, *, mode: str, seed: int, epoch: int, window_blocks: int = WINDOW_BLOCKS) -> np.ndarray:
    """The positions (into `rows`) an epoch visits, in order: `EpochSampler`'s draw for (seed, epoch), grouped by
    block with the blocks in a random order, then shuffled within windows of `window_blocks` x block_rows draws."""
    from .datamodule import EpochSampler, epoch_seed

    sampler = EpochSampler(rows.labels, mode=mode, seed=seed)
    sampler.set_epoch(epoch)
    draw = sampler.indices().numpy()
    rng = np.random.default_rng(epoch_seed(seed, epoch, 2))
    block_rank = rng.permutation(int(rows.blocks.max()) + 1 if len(rows) else 0)
    order = draw[np.lexsort((rng.random(len(draw)), block_rank[rows.blocks[draw]]))]
    window = window_blocks * rows.block_rows
    for start in range(0, len(order), window):
        order[start:start + window] = order[start:start + window][rng.permutation(min(window, len(order) - start))]
    return order


class CubeEpochs:
    """The training split as a stream of batches, one epoch at a time (`for_epoch(epoch, rank, world)`): the rank
    takes its contiguous share of `epoch_order` (padded by wrapping, as DistributedSampler pads, so every rank runs
    the same number of batches), and each DataLoader worker a contiguous run of its batches."""

    def __init__(self, rows: CubeRows, *, batch_size: int, mode: str, seed: int):
        self.rows, self.batch_size, self.mode, self.seed = rows, int(batch_size), mode, int(seed)
        self.labels = rows.labels

    def for_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> "EpochBatches":
        order = epoch_order(self.rows, mode=self.mode, seed=self.seed, epoch=epoch)
        share = math.ceil(len(order) / world)
        if share * world > len(order):
            order = np.concatenate([order, order[: share * world - len(order)]])
        return EpochBatches(self.rows, order[rank * share:(rank + 1) * share], self.batch_size)


class EpochBatches(IterableDataset):
    """One rank's batches of one epoch: (images (B, C, H, W) float32, labels (B,)), read block by block."""

    def __init__(self, rows: CubeRows, order: np.ndarray, batch_size: int):
        self.rows, self.order, self.batch_size = rows, order, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        n = len(self)
        for batch in range(worker * n // workers, (worker + 1) * n // workers):
            positions = self.order[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield (torch.from_numpy(self.rows.take(positions)),
                   torch.as_tensor(self.rows.labels[positions], dtype=torch.long))
