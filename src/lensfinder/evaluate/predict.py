"""Catalogue prediction: score any set of .npy or FITS cutouts in batches and write a CSV keyed by path, ranked by
a float64 log-odds score that never saturates, with the cutouts that could not be scored listed beside it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.cutouts import expand_inputs, group_bands, is_fits as _is_fits, read_cutout, read_fits  # noqa: F401  (moved; importable from here)
from ..data.layouts import atomic_write, write_text_atomic
from ..metrics import log_odds
from ..train.module import LensModule
from ..train.run import load_model, versions
from ..validation import InputError, check_channels
from .inference import (DEFAULT_RESCORE_MIN, DEFAULT_RESCORE_TOP, VIEWS, pick_device, rescore_count, scoring_module, softmax, top_indices,
                        tta_plan, view_logits)
from .shipped import WEIGHTS_DIR, shipped_run, shipped_weights  # noqa: F401  (moved; importable from here)

NPY_SUFFIXES = (".npy",)
OUTPUT_SUFFIXES = (".csv",)
ON_BAD = ("skip", "fail")  # what a cutout that cannot be scored does: listed and left out, or stops the run


def resolve_model(*, run: Path | None = None, task: str | None = None) -> LensModule:
    if run is not None:
        module = load_model(Path(run))
        if task is not None and task != module.hparams.task:
            raise InputError(f"--task {task} disagrees with --run {run}, a {module.hparams.task} model; drop --task "
                             f"(the run decides), or pass a run trained for {task}")
        return module
    if task is not None:
        return load_model(shipped_weights(task))
    raise InputError("say which model scores the cutouts: --run RUN_FOLDER, or --task TASK for the shipped weights")


class CutoutDataset(Dataset):
    """One item per object: (index, (C, H, W) float32 tensor, "") when the cutout reads and matches the model's
    channel count and size, else (index, None, the reason)."""

    def __init__(self, objects: list[tuple[str, list[Path]]], *, channels: int, size: int, allow_pickle: bool):
        self.objects, self.channels, self.size, self.allow_pickle = objects, channels, size, allow_pickle

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        key, paths = self.objects[index]
        try:
            image = read_cutout(paths, allow_pickle=self.allow_pickle)
            check_channels(image.shape, expected_channels=self.channels, expected_size=self.size, source=key)
        except InputError as err:
            return index, None, str(err)
        return index, torch.from_numpy(image), ""


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A batch of the cutouts that read, with the indices of those and the reasons of those that did not."""
    good = [(index, image) for index, image, _ in items if image is not None]
    bad = [(index, reason) for index, image, reason in items if image is None]
    return [index for index, _ in good], torch.stack([image for _, image in good]) if good else None, bad


@dataclass(frozen=True)
class Catalogue:
    """What `predict_catalog` wrote. A path-like (``open(catalogue)`` reads the CSV) that also carries the counts."""

    path: Path
    scored: int
    skipped: list[tuple[str, str]]  # (id, reason) of every cutout left out
    skipped_path: Path | None  # the CSV listing them, when there were any

    def __fspath__(self) -> str:
        return str(self.path)


def _device(name: str) -> torch.device:
    try:
        target = pick_device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name!r}: not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: no CUDA device on this machine; use --device cpu (or auto)")
    return target


def score_loader(module: LensModule, loader: DataLoader, *, views: int = 1, device: str, progress: bool,
                 prevalence: float | None, on_bad: str, ids: list[str],
                 description: str = "scoring cutouts") -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(indices, float64 logits (N, K), skipped) over a loader of `CutoutDataset` batches, each cutout scored with
    `views` (1 or 8) D4 views; a bad cutout is skipped with its reason, or, with ``on_bad="fail"``, stops the run
    with an `InputError`. `module` is one prepared by `inference.scoring_module` for `device`."""
    target = _device(device)
    indices: list[int] = []
    chunks, skipped = [], []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description=description, total=len(loader), transient=True)
    for batch_indices, images, bad in batches:
        for index, reason in bad:
            if on_bad == "fail":
                raise InputError(f"{reason}\n(--on-bad fail stops at the first bad cutout; the default, --on-bad skip, "
                                 "lists it and scores the rest)")
            prefix = f"{ids[index]}: "
            skipped.append((ids[index], reason[len(prefix):] if reason.startswith(prefix) else reason))
        if images is not None:
            chunks.append(view_logits(module, images.to(target), views=views, prevalence=prevalence).cpu().numpy())
            indices += batch_indices
    logits = np.concatenate(chunks) if chunks else np.zeros((0, module.hparams.num_classes))
    return np.asarray(indices, dtype=np.int64), logits.astype(np.float64), skipped


def skipped_path_for(out: Path) -> Path:
    """Where the cutouts left out of catalogue `out` are listed: <name>.skipped.csv beside it."""
    return out.with_name(f"{out.name[: -len('.csv')]}.skipped.csv")


def metadata_path_for(out: Path) -> Path:
    """Where catalogue `out` records what wrote it (lensfinder and library versions, model, task, TTA,
    prevalence, counts): <name>.meta.json beside it."""
    return out.with_name(f"{out.name[: -len('.csv')]}.meta.json")


def predict_catalog(inputs: list[Path], out: Path, *, run: Path | None = None, task: str | None = None,
                    batch_size: int = 512, tta: bool | str | None = None, rescore_top: float = DEFAULT_RESCORE_TOP,
                    rescore_min: int = DEFAULT_RESCORE_MIN, device: str = "auto", num_workers: int = 0,
                    allow_pickle: bool = False, band_suffixes: list[str] | None = None, shard: tuple[int, int] | None = None,
                    progress: bool = False, prevalence: float | None = None, on_bad: str = "skip") -> Catalogue:
    """Write `out` (CSV): rank, path, p_<class> for each class, score, predicted, views; one row per object, keyed
    by its path (with `band_suffixes`, the object's name without the band suffix), ranked by `score`: the float64
    log-odds of the positive class (binary tasks, e.g. `lens`) or of the predicted class (multi-class), written
    at full precision. It never saturates where the probabilities round to 1, so ties are real ties.

    `tta` chooses the D4 views (`inference.tta_plan`): "top" (the lens finders' default) scores every object with
    one view and re-scores the best-scored `rescore_top` share (default 1 %, at least `rescore_min` objects: 1,000)
    with the 8 views; "all" (True) gives
    every object the 8, "none" (False) one; None follows the model. `views` says what each row got (1 or 8).

    A cutout that cannot be read or does not fit the model (shape, channels, NaN pixels) is left out and
    listed with the reason in `<out>.skipped.csv` (``on_bad="skip"``, the default), or stops the run
    (``on_bad="fail"``); a run in which every cutout is bad stops with the first reason.

    `shard=(k, n)` scores every n-th object starting at k (0-based), so n jobs on a cluster split a
    catalogue between them without coordination; sorting their rows together by `score` gives the order
    of the whole run (each shard re-scores its own top share)."""
    out = Path(out)
    if not out.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"{out}: unsupported output type; expected one of {', '.join(OUTPUT_SUFFIXES)}")
    if on_bad not in ON_BAD:
        raise InputError(f"--on-bad {on_bad!r}: expected one of {', '.join(ON_BAD)}")
    if batch_size < 1 or num_workers < 0:
        raise InputError(f"--batch-size {batch_size} / --num-workers {num_workers}: expected a batch size >= 1 "
                         "and a number of workers >= 0")
    module = resolve_model(run=run, task=task)
    mode, share = tta_plan(module.hparams, tta, rescore_top, rescore_min)
    if prevalence is not None and (module.hparams.num_classes != 2 or not module.hparams.get("calibration")):
        raise InputError("--prevalence needs a calibrated binary (lens-finding) model")
    if prevalence is not None and not 0 < prevalence < 1:
        raise InputError(f"--prevalence must be in (0, 1), got {prevalence}")
    files = expand_inputs(inputs)
    if not files:
        raise InputError("no inputs: give .npy / FITS files or folders of them")
    if band_suffixes:
        npy = [f for f in files if not _is_fits(f)]
        if npy:
            raise InputError(f"--bands reads one FITS file per band, but {len(npy)} input(s) are .npy files (first: "
                             f"{npy[0]}); drop --bands to score .npy cutouts (each holds all its bands), or give only "
                             "the per-band FITS files")
        objects = group_bands(files, band_suffixes)
    else:
        objects = [(str(f), [f]) for f in files]
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise InputError(f"shard {index}/{count}: expected 0 <= K < N in --shard K/N")
        objects = objects[index::count]
    ids = [key for key, _ in objects]
    hp = module.hparams
    scorer = scoring_module(module, _device(device))

    def loader(chosen):
        dataset = CutoutDataset(chosen, channels=hp.in_channels, size=hp.image_size, allow_pickle=allow_pickle)
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)

    first_views = VIEWS if mode == "all" else 1
    indices, logits, skipped = score_loader(scorer, loader(objects), views=first_views, device=device, progress=progress,
                                            prevalence=prevalence, on_bad=on_bad, ids=ids)
    if objects and not len(indices):
        first_id, first_reason = skipped[0]
        raise InputError(f"{first_id}: {first_reason}\n(every one of the {len(objects)} cutouts was refused; "
                         "this one is the first)")
    class_names = list(hp.class_names)
    positive = 1 if len(class_names) == 2 else None
    views = np.full(len(indices), first_views, dtype=np.int64)
    if mode == "top":  # the second pass: the best-scored share again, with the 8 views
        top = np.sort(top_indices(log_odds(logits, positive=positive), rescore_count(len(indices), share, rescore_min)))
        chosen = [objects[indices[i]] for i in top]
        again, again_logits, _ = score_loader(scorer, loader(chosen), views=VIEWS, device=device, progress=progress,
                                              prevalence=prevalence, on_bad="skip", ids=[k for k, _ in chosen],
                                              description=f"re-scoring the top {len(top)} with {VIEWS} views")
        logits[top[again]] = again_logits  # a cutout that no longer reads keeps its one-view score
        views[top[again]] = VIEWS
    probs = softmax(logits)
    scores = log_odds(logits, positive=positive)
    order = np.lexsort((np.arange(len(scores)), -scores))
    with atomic_write(out, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", *[f"p_{c}" for c in class_names], "score", "predicted", "views"])
        for rank, i in enumerate(order, start=1):
            writer.writerow([rank, ids[indices[i]], *[f"{v:.6g}" for v in probs[i]], repr(float(scores[i])),
                             class_names[int(logits[i].argmax())], int(views[i])])
    write_text_atomic(metadata_path_for(out), json.dumps(
        {**versions(), "model": str(run) if run is not None else f"shipped ({task})", "task": hp.task,
         "preset": hp.get("preset"), "tta": mode, "rescore_top": share if mode == "top" else None,
         "rescore_min": rescore_min if mode == "top" else None,
         "rescored": int((views == VIEWS).sum()) if mode == "top" else 0, "prevalence": prevalence,
         "scored": int(len(indices)), "skipped": len(skipped)}, indent=1))
    listing = skipped_path_for(out)
    if skipped:
        with atomic_write(listing, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(skipped)
    else:
        listing.unlink(missing_ok=True)  # a list from an earlier run of the same catalogue would mislead
    return Catalogue(out, len(indices), skipped, listing if skipped else None)
