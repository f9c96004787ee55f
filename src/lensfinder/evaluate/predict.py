"""Catalogue prediction: score any set of .npy or FITS cutouts in batches and write a ranked CSV keyed by path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.layouts import atomic_write
from ..train.module import LensModule
from ..train.run import load_model
from ..validation import InputError, as_chw, check_channels, load_npy
from .inference import predict_loader
from .shipped import WEIGHTS_DIR, shipped_run, shipped_weights  # noqa: F401  (moved; importable from here)

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
OUTPUT_SUFFIXES = (".csv",)


def resolve_model(*, run: Path | None = None, task: str | None = None) -> LensModule:
    if run is not None:
        return load_model(Path(run))
    if task is not None:
        return load_model(shipped_weights(task))
    raise InputError("say which model scores the cutouts: --run RUN_FOLDER, or --task TASK for the shipped weights")


def _is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, and every .npy / FITS file below each folder, sorted; anything else is refused."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and (p.suffix == ".npy" or _is_fits(p)))
            if not found:
                raise InputError(f"{item}: folder holds no .npy or FITS files")
            files += found
        elif item.is_file():
            if not (item.suffix == ".npy" or _is_fits(item)):
                raise InputError(f"{item}: unsupported file type; expected .npy or FITS ({', '.join(FITS_SUFFIXES)})")
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return files


def group_bands(files: list[Path], band_suffixes: list[str]) -> list[tuple[str, list[Path]]]:
    """Group one-file-per-band FITS cutouts NAME_<band>.fits into objects, bands in the given order."""
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        stem = path.name
        for suffix in FITS_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        band = next((b for b in band_suffixes if stem.endswith(f"_{b}")), None)
        if band is None:
            raise InputError(f"{path}: name does not end in _<band> for any band of {band_suffixes}")
        key = str(path.parent / stem[: -len(band) - 1])
        groups.setdefault(key, {})[band] = path
    out = []
    for key, bands in sorted(groups.items()):
        missing = [b for b in band_suffixes if b not in bands]
        if missing:
            raise InputError(f"{key}: band file(s) missing for band(s) {', '.join(missing)}")
        out.append((key, [bands[b] for b in band_suffixes]))
    return out


def read_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if hdu.data is not None and hdu.data.ndim in (2, 3):
                    return np.asarray(hdu.data, dtype=np.float32)
    except OSError as err:
        raise InputError(f"{path}: unreadable FITS file ({err})") from None
    raise InputError(f"{path}: no image HDU of shape (H, W) or (C, H, W)")


class CutoutDataset(Dataset):
    """One item per object: (C, H, W) float32, validated against the model's channel count and size."""

    def __init__(self, objects: list[tuple[str, list[Path]]], *, channels: int, size: int, allow_pickle: bool):
        self.objects, self.channels, self.size, self.allow_pickle = objects, channels, size, allow_pickle

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> torch.Tensor:
        key, paths = self.objects[index]
        if len(paths) > 1:
            image = np.stack([as_chw(read_fits(p), p)[0] for p in paths])
        elif _is_fits(paths[0]):
            image = as_chw(read_fits(paths[0]), paths[0])
        else:
            image = as_chw(load_npy(paths[0], allow_pickle=self.allow_pickle), paths[0])
        check_channels(image.shape, expected_channels=self.channels, expected_size=self.size, source=key)
        return torch.from_numpy(image)


def predict_catalog(inputs: list[Path], out: Path, *, run: Path | None = None, task: str | None = None,
                    batch_size: int = 512, tta: bool | None = None, device: str = "auto", num_workers: int = 0,
                    allow_pickle: bool = False, band_suffixes: list[str] | None = None,
                    shard: tuple[int, int] | None = None, progress: bool = False,
                    prevalence: float | None = None) -> Path:
    """Write `out` (CSV): rank, path, p_<class> for each class, predicted; ranked by the positive-class
    probability (binary tasks) or by the confidence of the predicted class (multi-class).

    `shard=(k, n)` scores every n-th object starting at k (0-based), so n jobs on a cluster split a
    catalogue between them without coordination; merge their CSVs by score afterwards."""
    out = Path(out)
    if not out.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"{out}: unsupported output type; expected one of {', '.join(OUTPUT_SUFFIXES)}")
    module = resolve_model(run=run, task=task)
    if prevalence is not None and (module.hparams.num_classes != 2 or not module.hparams.get("calibration")):
        raise InputError("--prevalence needs a calibrated binary (lens-finding) model")
    if prevalence is not None and not 0 < prevalence < 1:
        raise InputError(f"--prevalence must be in (0, 1), got {prevalence}")
    files = expand_inputs(inputs)
    if band_suffixes:
        objects = group_bands([f for f in files if _is_fits(f)], band_suffixes)
    else:
        objects = [(str(f), [f]) for f in files]
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise InputError(f"shard {index}/{count}: expected 0 <= K < N in --shard K/N")
        objects = objects[index::count]
    dataset = CutoutDataset(objects, channels=module.hparams.in_channels, size=module.hparams.image_size, allow_pickle=allow_pickle)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    probs = predict_loader(module, loader, tta=tta, device=device, progress=progress, prevalence=prevalence)
    class_names = list(module.hparams.class_names)
    key = probs[:, 1] if len(class_names) == 2 else probs.max(1)
    order = np.argsort(-key, kind="stable")
    with atomic_write(out, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", *[f"p_{c}" for c in class_names], "predicted"])
        for rank, i in enumerate(order, start=1):
            writer.writerow([rank, objects[i][0], *[f"{v:.6g}" for v in probs[i]], class_names[int(probs[i].argmax())]])
    return out
