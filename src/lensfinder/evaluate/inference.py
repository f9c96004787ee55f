"""Batched inference shared by evaluation and catalogue prediction: log-space class scores (float64, never
saturated), from which `metrics.log_odds` gives the ranking score and a softmax the probabilities.

Views: a lens has no preferred orientation, so a score can be averaged over the 8 views of the dihedral group D4
(`data.transforms.d4_transform`). Prediction chooses which objects get them (`tta_plan`): ``"top"`` (two passes:
every object scored with one view, then the best-scored `rescore_top` share re-scored with the 8 views; the lens
finders' default; at least `DEFAULT_RESCORE_MIN` objects, so that a test set of 10^4 objects has its whole top
re-scored), ``"all"`` (every object, 8 views) or ``"none"`` (one view). The normalisations are per image
and band (order statistics and element-wise maps) and so commute with D4: the image is normalised once and its 8
views are taken of the normalised image, which gives `LensModule.predict_logits`'s result for an eighth of the
normalisation's cost."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.transforms import d4_transform
from ..train.module import LensModule
from ..validation import InputError

VIEWS = 8  # the D4 views averaged
TTA_MODES = ("top", "all", "none")
DEFAULT_RESCORE_TOP = 0.01  # the share of the best-scored objects that `"top"` re-scores with the 8 views
# ... and at least this many: the ranks a catalogue is judged by (the lenses above the first / tenth non-lens, the
# inspected top) reach rank ~1,000 on a 2 x 10^4 test set with 5 % lenses, beyond its top 1 % (results/two_pass.json)
DEFAULT_RESCORE_MIN = 1000


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def tta_plan(hparams, tta: bool | str | None = None, rescore_top: float = DEFAULT_RESCORE_TOP,
             rescore_min: int = DEFAULT_RESCORE_MIN) -> tuple[str, float]:
    """(mode, share) of the test-time averaging a prediction does: mode is "top", "all" or "none" (see the module
    docstring) and share the fraction of the scored objects that "top" re-scores with the 8 views (0 otherwise).

    `tta`: None follows the model: trained with test-time averaging, a binary (lens-finding) model re-scores its top
    ("top"), a multi-class one averages every object ("all"); trained without, one view ("none"). True is "all",
    False "none". "top" with a share of 0 is "none", and with a share of 1 "all". `rescore_min` (checked here) is
    the fewest objects "top" re-scores (`rescore_count`)."""
    if int(rescore_min) < 0:
        raise InputError(f"--rescore-min {rescore_min}: expected a number of objects >= 0")
    if not 0.0 <= float(rescore_top) <= 1.0:
        raise InputError(f"--rescore-top {rescore_top}: expected the share of the best-scored objects to re-score with "
                         "the 8 views, in [0, 1] (e.g. 0.01; 0 scores everything with one view)")
    if tta is None:
        mode = ("top" if hparams.num_classes == 2 else "all") if hparams.tta else "none"
    elif isinstance(tta, bool):
        mode = "all" if tta else "none"
    elif tta in TTA_MODES:
        mode = tta
    else:
        raise InputError(f"--tta {tta!r}: expected one of {', '.join(TTA_MODES)} (top: one view for every object, "
                         "the 8 D4 views for the best-scored --rescore-top share; all: 8 views for every object; none: "
                         "one view)")
    if mode == "top" and float(rescore_top) == 0.0:
        mode = "none"
    if mode == "top" and float(rescore_top) == 1.0:
        mode = "all"
    return mode, float(rescore_top) if mode == "top" else 0.0


def rescore_count(n_scored: int, share: float, minimum: int = DEFAULT_RESCORE_MIN) -> int:
    """How many of `n_scored` objects the second pass re-scores: ceil(share x n), at least `minimum` (and 1), at
    most n; none when share is 0."""
    if share <= 0 or n_scored <= 0:
        return 0
    return min(int(n_scored), max(1, int(minimum), math.ceil(round(share * n_scored, 9))))


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest scores, best first; ties in index order (as the catalogues rank)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0:
        return np.zeros(0, np.int64)
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def scoring_module(module: LensModule, device: torch.device | str = "cpu") -> LensModule:
    """The copy of `module` that scores: eval mode, batch norms folded (`LensModule.for_inference`), on `device`."""
    return module.for_inference().to(device)


def view_logits(module: LensModule, x: torch.Tensor, *, views: int = 1, calibrated: bool = True,
                prevalence: float | None = None) -> torch.Tensor:
    """`LensModule.predict_logits` with `views` (1 or 8) D4 views: float64 log-space class scores (N, K), the mean
    over the views of the log-softmax, calibrated by default. The image is normalised once and the views are taken
    of the normalised image (the normalisations commute with D4)."""
    if views not in (1, VIEWS):
        raise ValueError(f"views: expected 1 or {VIEWS}, found {views}")
    with torch.inference_mode():
        z = module.normalizer(x)
        if views == 1:
            log_probs = F.log_softmax(module.model(z).double(), dim=1)
        else:
            log_probs = torch.stack([F.log_softmax(module.model(d4_transform(z, k)).double(), dim=1)
                                     for k in range(views)]).mean(0)
        return module.calibrate(log_probs, prevalence=prevalence) if calibrated else log_probs


def views_for(module: LensModule, tta: bool | None) -> int:
    """8 when `tta` (None: the model's own setting) asks for the D4 average, else 1."""
    return VIEWS if (module.hparams.tta if tta is None else tta) else 1


class _ArrayDataset(Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index], dtype=np.float32))


def predict_logits_loader(module: LensModule, loader, *, tta: bool | None = None, device: str = "auto",
                          progress: bool = False, calibrated: bool = True, prevalence: float | None = None) -> np.ndarray:
    """Float64 log-space class scores (N, K) (`view_logits`) for every batch of a loader yielding image tensors (or
    (images, extra) pairs): 8 views when `tta` (None: as the model was trained), else 1. `calibrated=False` gives
    the mean log-probabilities over the views."""
    target = pick_device(device)
    views = views_for(module, tta)
    module = scoring_module(module, target)
    chunks = []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description="scoring cutouts", total=len(loader), transient=True)
    for batch in batches:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = view_logits(module, images.to(target, non_blocking=True), views=views, calibrated=calibrated,
                             prevalence=prevalence)
        chunks.append(logits.cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, module.hparams.num_classes), dtype=np.float64)


def predict_logits_array(module: LensModule, images: np.ndarray, *, batch_size: int = 256, tta: bool | None = None,
                         device: str = "auto", calibrated: bool = True, prevalence: float | None = None) -> np.ndarray:
    """`predict_logits_loader` over an (N, C, H, W) array (memory-mapped packs are read batch by batch)."""
    return predict_logits_loader(module, DataLoader(_ArrayDataset(images), batch_size=batch_size), tta=tta,
                                 device=device, calibrated=calibrated, prevalence=prevalence)


def two_pass_logits_array(module: LensModule, images: np.ndarray, *, mode: str, share: float, batch_size: int = 256,
                          device: str = "auto", prevalence: float | None = None, positive: int | None = None,
                          minimum: int = DEFAULT_RESCORE_MIN) -> tuple[np.ndarray, np.ndarray]:
    """(float64 logits (N, K), views (N,)) of an (N, C, H, W) array scored as `tta_plan` says: "all" and "none"
    score every image with 8 views or 1; "top" scores every image with 1, then re-scores the `rescore_count(N,
    share, minimum)` best-scored ones (by the log-odds of class `positive`, default the predicted class) with the 8."""
    from ..metrics import log_odds

    views = np.full(len(images), VIEWS if mode == "all" else 1, dtype=np.int8)
    logits = predict_logits_array(module, images, batch_size=batch_size, tta=mode == "all", device=device,
                                  prevalence=prevalence)
    if mode == "top" and len(images):
        top = np.sort(top_indices(log_odds(logits, positive=positive), rescore_count(len(images), share, minimum)))
        logits[top] = predict_logits_array(module, _Rows(images, top), batch_size=batch_size, tta=True, device=device,
                                           prevalence=prevalence)
        views[top] = VIEWS
    return logits, views


class _Rows:
    """Rows `index` of an array, indexed like an array of their own (for a second pass over a few rows)."""

    def __init__(self, images, index: np.ndarray):
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.images[self.index[i]]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of log-space scores, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def predict_loader(module: LensModule, loader, *, tta: bool | None = None, device: str = "auto",
                   progress: bool = False, prevalence: float | None = None) -> np.ndarray:
    """Calibrated class probabilities (N, K), float64: the softmax of `predict_logits_loader`. Rank by
    `metrics.log_odds` of the logits instead: probabilities round to 1 at the top of a catalogue."""
    return softmax(predict_logits_loader(module, loader, tta=tta, device=device, progress=progress, prevalence=prevalence))


def predict_array(module: LensModule, images: np.ndarray, *, batch_size: int = 256, tta: bool | None = None,
                  device: str = "auto") -> np.ndarray:
    """Calibrated class probabilities (N, K) of an (N, C, H, W) array; see `predict_logits_array`."""
    return softmax(predict_logits_array(module, images, batch_size=batch_size, tta=tta, device=device))
