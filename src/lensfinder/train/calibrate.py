"""Post-hoc calibration fitted on the validation split after training.

Class weighting and augmentation leave softmax scores that are not probabilities. We fit, on held-out
validation images, one scale on the model's log-probabilities (temperature scaling) and, for binary
tasks, one bias on the positive class (Platt scaling). Both keep the ranking of the positive class, so
AUC, AP and TPR0/TPR10 are unchanged; only the probabilities move. The fit prevalence is stored, so a
user can ask for probabilities at a survey's prevalence instead (prior shift, Saerens et al. 2002).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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
    if log_probs.shape[1] == 2:
        logits = logits + torch.stack([torch.zeros_like(torch.as_tensor(bias)), torch.as_tensor(bias)]).to(logits)
    return logits


def prior_shift(calibration: dict, prevalence: float) -> float:
    """Extra positive-class bias that moves probabilities from the fit prevalence to `prevalence`."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    fitted = calibration["fit_prevalence"][1]
    return math.log(prevalence / (1 - prevalence)) - math.log(fitted / (1 - fitted))


def shift_prevalence(probs: torch.Tensor, calibration: dict, prevalence: float) -> torch.Tensor:
    """Binary probabilities re-expressed for a population whose positive fraction is `prevalence`."""
    if probs.shape[1] != 2:
        raise ValueError("a prevalence applies to binary tasks (lens finding) only")
    shift = torch.tensor([0.0, prior_shift(calibration, prevalence)], dtype=probs.dtype, device=probs.device)
    return F.softmax(torch.log(probs.clamp_min(1e-12)) + shift, dim=1)


@torch.no_grad()
def validation_log_probs(module, images: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """Uncalibrated log-probabilities (with the module's TTA setting) for an (N, C, H, W) array."""
    module.eval()
    # np.array copies each batch out of the read-only memory-mapped pack (torch wants writable memory).
    chunks = [module.predict_logits(torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)), calibrated=False)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)
