"""Pack the many small .npy files of a split once into one memory-mapped array, keyed by the file listing.

Re-reading tens of thousands of files every epoch is the slow part of training on these data sets; the
packed cache is read through the page cache instead. The key covers path, size and modification time
of every file, so editing, adding or removing a file makes a new cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..validation import InputError, as_chw, load_npy
from .layouts import Listing, atomic_path


def default_cache_dir() -> Path:
    return Path(os.environ.get("LENSFINDER_CACHE", Path.home() / ".cache" / "lensfinder"))


def listing_key(listing: Listing, *, allow_pickle: bool) -> str:
    digest = hashlib.sha256(f"v1 pickle={allow_pickle}\n".encode())
    for path in listing.paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def read_image(path: Path, *, allow_pickle: bool = False) -> np.ndarray:
    return as_chw(load_npy(path, allow_pickle=allow_pickle), path)


def pack(listing: Listing, *, cache_dir: Path | None = None, allow_pickle: bool = False) -> Path:
    """Return the path of the packed (N, C, H, W) float32 .npy for `listing`, building it if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{listing_key(listing, allow_pickle=allow_pickle)}.npy"
    if target.exists():
        return target
    first = read_image(listing.paths[0], allow_pickle=allow_pickle)
    with atomic_path(target) as tmp:
        packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(listing), *first.shape))
        packed[0] = first
        for i, path in enumerate(listing.paths[1:], start=1):
            image = read_image(path, allow_pickle=allow_pickle)
            if image.shape != first.shape:
                raise InputError(
                    f"{path}: expected shape {first.shape} like {listing.paths[0].name} (mixed shapes in one data set), "
                    f"found {image.shape}; resample or remove the odd file"
                )
            packed[i] = image
        packed.flush()
        del packed
    return target


def open_packed(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")
