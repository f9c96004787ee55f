"""Readers for the two DeepLense on-disk layouts (simulation spec, section 3).

substructure: ROOT/<split>/<class>/*.npy        (classes from folder names; default order no, sphere, vort)
lensfinding:  ROOT/{train,test}_{lenses,nonlenses}/*.npy   (3, 64, 64) each
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from ..validation import InputError

TASKS = ("substructure", "lensfinding")
SUBSTRUCTURE_CLASS_ORDER = ("no", "sphere", "vort")
LENSFINDING_CLASSES = ("nonlens", "lens")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class Listing:
    """The files of one split with their integer labels (index into `class_names`)."""

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    root: Path = field(default=Path("."))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> "Listing":
        return Listing([self.paths[i] for i in index], self.labels[index], self.class_names, self.root)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def _npy_files(folder: Path) -> list[Path]:
    """The .npy files of a folder; hidden ones (names starting with '.', e.g. a killed writer's temporaries) are not data."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".npy" and not p.name.startswith(".") and p.is_file())


def _order_classes(names: list[str]) -> list[str]:
    known = [c for c in SUBSTRUCTURE_CLASS_ORDER if c in names]
    return known + sorted(c for c in names if c not in SUBSTRUCTURE_CLASS_ORDER)


def discover(root: Path, task: str) -> dict[str, Listing]:
    """Find every split of a data root. Splits without files are refused, naming the empty folder."""
    root = Path(root)
    check_task(task)
    if not root.is_dir():
        raise InputError(f"{root}: data root not found (expected a folder in the {task} layout)")
    return _discover_substructure(root) if task == "substructure" else _discover_lensfinding(root)


def _discover_substructure(root: Path) -> dict[str, Listing]:
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES}
    if "train" not in split_dirs and "test" not in split_dirs:
        raise InputError(
            f"{root}: expected the substructure layout ROOT/<split>/<class>/*.npy with split folders "
            f"train/val/test, found {sorted(d.name for d in root.iterdir() if d.is_dir()) or 'no folders'}"
        )
    class_names = _order_classes(sorted({c.name for d in split_dirs.values() for c in d.iterdir() if c.is_dir()}))
    if len(class_names) < 2:
        raise InputError(f"{root}: expected at least two class folders (e.g. no, sphere, vort) in each split, found {class_names}")
    splits = {}
    for split, split_dir in split_dirs.items():
        paths, labels = [], []
        for label, name in enumerate(class_names):
            class_dir = split_dir / name
            files = _npy_files(class_dir) if class_dir.is_dir() else []
            if not files:
                raise InputError(f"{class_dir}: no .npy files for class {name!r} in split {split!r}")
            paths += files
            labels += [label] * len(files)
        splits[split] = Listing(paths, np.asarray(labels, dtype=np.int64), class_names, root)
    return splits


def _discover_lensfinding(root: Path) -> dict[str, Listing]:
    splits = {}
    for split in ("train", "test"):
        folders = [root / f"{split}_nonlenses", root / f"{split}_lenses"]
        present = [f.is_dir() for f in folders]
        if not any(present):
            continue
        paths, labels = [], []
        for label, folder in enumerate(folders):
            files = _npy_files(folder) if folder.is_dir() else []
            if not files:
                raise InputError(f"{folder}: no .npy files (the lens-finding layout needs both {split}_lenses and {split}_nonlenses)")
            paths += files
            labels += [label] * len(files)
        splits[split] = Listing(paths, np.asarray(labels, dtype=np.int64), list(LENSFINDING_CLASSES), root)
    if not splits:
        raise InputError(
            f"{root}: expected the lens-finding layout with folders train_lenses, train_nonlenses, test_lenses, "
            f"test_nonlenses; found {sorted(d.name for d in root.iterdir() if d.is_dir()) or 'no folders'}"
        )
    return splits


def stratified_split(labels: np.ndarray, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with the same class balance in both, reproducible for a given seed."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_val = max(1, int(round(val_fraction * len(members)))) if len(members) > 1 else 0
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def held_out_listings(splits: dict[str, Listing], *, val_fraction: float, seed: int,
                      test_fraction: float = 0.0) -> dict[str, Listing]:
    """train, val and (with `test_fraction` > 0) test listings. `test_fraction` of each class of the train folder
    is held out as a test split first (seeded, stratified), for layouts without one (DeepLense Common Test I ships
    train/ and val/ only); without a val folder, `val_fraction` of what remains becomes the validation split."""
    if "train" not in splits:
        raise InputError(f"{next(iter(splits.values())).root}: no training split found (need a train folder)")
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    train = splits["train"]
    out = {}
    if test_fraction > 0:
        keep_idx, test_idx = stratified_split(train.labels, val_fraction=test_fraction, seed=seed + 1)
        train, out["test"] = train.subset(keep_idx), train.subset(test_idx)
    if "val" in splits:
        out["train"], out["val"] = train, splits["val"]
    else:
        train_idx, val_idx = stratified_split(train.labels, val_fraction=val_fraction, seed=seed)
        out["train"], out["val"] = train.subset(train_idx), train.subset(val_idx)
    return out


def train_val_listings(splits: dict[str, Listing], *, val_fraction: float, seed: int,
                       test_fraction: float = 0.0) -> tuple[Listing, Listing]:
    """The train and validation listings; without a val split, a stratified split of train (see held_out_listings)."""
    held = held_out_listings(splits, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction)
    return held["train"], held["val"]


def write_split_record(path: Path, val: Listing, *, seed: int, val_fraction: float, test: Listing | None = None,
                       test_fraction: float = 0.0) -> None:
    """Record which files a seeded split sent to validation (and to the held-out test split), relative to the
    data root, so that evaluation later scores exactly those files."""
    payload = {"seed": seed, "val_fraction": val_fraction, "val_files": [os.path.relpath(p, val.root) for p in val.paths]}
    if test is not None:
        payload.update(test_fraction=test_fraction, test_files=[os.path.relpath(p, test.root) for p in test.paths])
    write_text_atomic(path, json.dumps(payload, indent=1))


SPLIT_ROLES = {"train": "training", "val": "validation", "test": "test"}


def evaluation_listing(splits: dict[str, Listing], split: str, *, record: Path | None = None,
                       val_fraction: float = 0.1, seed: int = 0) -> Listing:
    """The files to score for `split`: the split's folder; else the files a run's split.json (`record`) held out
    for it (a test fraction of train, or a validation fraction); else, for val, the seeded split of train."""
    split = SPLIT_ALIASES.get(split.lower(), split)
    if split not in SPLIT_ROLES:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_ROLES)}")
    recorded = json.loads(Path(record).read_text()) if record is not None and Path(record).is_file() else {}
    if split in ("val", "test") and f"{split}_files" in recorded and "train" in splits:
        train = splits["train"]
        wanted = {os.path.normpath(f) for f in recorded[f"{split}_files"]}
        index = [i for i, p in enumerate(train.paths) if os.path.normpath(os.path.relpath(p, train.root)) in wanted]
        if len(index) != len(wanted):
            raise InputError(f"{record}: lists {len(wanted)} {split} files, of which {len(wanted) - len(index)} are "
                             f"missing from {train.root}/train; evaluate with the data the run was trained on")
        return train.subset(np.asarray(index, dtype=np.int64))
    if split in splits:
        return splits[split]
    if split == "val" and "train" in splits:
        return train_val_listings(splits, val_fraction=val_fraction, seed=seed)[1]
    root = next(iter(splits.values())).root
    hint = (" This layout has no test split: score the validation split (--split val; its numbers are validation "
            "numbers, and training chose its checkpoint on them) or train with --test-fraction 0.1 to hold out a test "
            "split from train" if split == "test" else "")
    raise InputError(f"{root}: no {split!r} split (found {', '.join(sorted(splits))}).{hint}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling to write instead of `path`, which it replaces only once the block completes: a reader
    (or a resumed run) sees the old file or the whole new one, never a torn one. For writers that take a path
    (figures, checkpoints, safetensors, memory maps); it keeps the suffix, which some of them read. The pid keeps
    parallel writers apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries that `atomic_path` leaves behind when its process is killed (SIGKILL skips the
    clean-up) below `folder`; returns how many. For a writer resuming into its own output folder."""
    stale = [p for p in Path(folder).rglob(".*.tmp*") if p.is_file() and re.fullmatch(r"\..+\.\d+\.tmp(\.[^.]+)*", p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """atomic_path for a file written through a handle."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)
