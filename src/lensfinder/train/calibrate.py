"""Post-hoc calibration fitted on the validation split after training.

Class weighting and augmentation leave softmax scores that are not probabilities. We fit, on held-out
validation images, one scale on the model's log-probabilities (temperature scaling) and, for binary
tasks, one bias on the positive class (Platt scaling). For two classes the calibrated log-odds is
scale * (log p1 - log p0) + bias, an increasing affine map of the uncalibrated margin, so every ranking
metric is unchanged. For three classes a temperature can reorder one class's probabilities across
images, so `evaluate` ranks on the uncalibrated log-probabilities and uses the calibrated ones only for
accuracy and calibration. The fit prevalence is stored, so a user can ask for probabilities at a
survey's prevalence instead (prior shift, Saerens et al. 2002), added in log space, never clamped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import choose_thresholds
from ..validation import InputError


def fit_calibration(log_probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Scale (and binary bias) minimising the negative log-likelihood of `labels`."""
    log_probs = log_probs.detach().double()
    labels = labels.long()
    binary = log_probs.shape[1] == 2
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=binary)
    params = [log_scale, bias] if binary else [log_scale]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(apply_to_log_probs(log_probs, log_scale.exp(), bias), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    prevalence = torch.bincount(labels, minlength=log_probs.shape[1]).double() / len(labels)
    return {"scale": float(log_scale.detach().exp()), "bias": float(bias.detach()), "fit_prevalence": prevalence.tolist()}


def apply_to_log_probs(log_probs: torch.Tensor, scale, bias) -> torch.Tensor:
    """Calibrated logits: scale * log p, plus `bias` on the positive class of a binary task."""
    logits = scale * log_probs
    if log_probs.shape[1] == 2:  # the bias in the logits' own precision (a Python float would become float32)
        bias = torch.as_tensor(bias, dtype=log_probs.dtype, device=log_probs.device)
        logits = logits + torch.stack([torch.zeros_like(bias), bias])
    return logits


def prior_shift(calibration: dict, prevalence: float) -> float:
    """Extra positive-class bias that moves probabilities from the fit prevalence to `prevalence`."""
    if not 0 < prevalence < 1:
        raise InputError(f"--prevalence: expected the fraction of lenses in (0, 1), e.g. 0.001, found {prevalence}")
    fitted = calibration["fit_prevalence"][1]
    return math.log(prevalence / (1 - prevalence)) - math.log(fitted / (1 - fitted))


@torch.no_grad()
def validation_log_probs(module, images: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """Uncalibrated log-probabilities (with the module's TTA setting) for an (N, C, H, W) array."""
    module.eval()
    # np.array copies each batch out of the read-only memory-mapped pack (torch wants writable memory).
    chunks = [module.predict_logits(torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)), calibrated=False)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def choose_survey_thresholds(labels: np.ndarray, score: np.ndarray, *, data: str, split: str, tta: bool) -> dict:
    """thresholds.json: score cuts for the survey goals of `metrics.THRESHOLD_GOALS`, chosen on `split` (val)
    and recorded with it, so that `evaluate` applies them to the test split instead of choosing them there."""
    labels = np.asarray(labels) == 1
    return {"chosen_on": split, "data": data, "n": int(len(labels)), "n_lenses": int(labels.sum()), "tta": tta,
            "score": "calibrated lens log-odds (the score column of predictions, without --prevalence)",
            "thresholds": choose_thresholds(labels, score)}
