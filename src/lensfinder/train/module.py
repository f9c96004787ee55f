"""The LightningModule: normalisation + registered model + loss, logging per stage (train/loss, val/auc)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..data.normalize import Normalizer
from ..data.transforms import d4_transform, random_d4
from .calibrate import apply_to_log_probs, prior_shift
from ..metrics import roc_auc_ovr
from ..models import create_model
from ..validation import InputError


class LensModule(L.LightningModule):
    def __init__(self, *, task: str, model_name: str, in_channels: int, num_classes: int, image_size: int,
                 class_names: list[str], normalization: dict, class_weights: list[float] | None,
                 lr: float, weight_decay: float, scheduler: str, optimizer: str = "adam", augment: bool, tta: bool,
                 preset: str | None = None, model_kwargs: dict | None = None, calibration: dict | None = None,
                 parent: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model_name, in_channels, num_classes, image_size=image_size, **(model_kwargs or {}))
        self.normalizer = Normalizer.from_state(normalization)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weights, persistent=False)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(x))

    def for_inference(self) -> "LensModule":
        """A copy in eval mode for scoring, with batch norms folded where the model can (ResNets; D4 models
        also become plain convolutions)."""
        module = LensModule(**self.hparams)  # rebuilt, not deep-copied: that would copy an attached trainer
        module.load_state_dict(self.state_dict())
        module.eval()
        if hasattr(module.model, "fold_batchnorm"):
            module.model.fold_batchnorm()
        return module

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, *, tta: bool | None = None, calibrated: bool = True,
                       prevalence: float | None = None) -> torch.Tensor:
        """Log-space class scores (N, K), float64, that never saturate: the mean over the views (8 D4 views
        with test-time averaging, else 1) of the log-softmax. Calibrated (when a calibration was fitted after
        training) by default: temperature scale, plus, for binary tasks, the Platt bias and the prior shift
        to `prevalence`. ``softmax`` of the result gives the probabilities, and `metrics.log_odds` the score
        a catalogue is ranked by."""
        use_tta = self.hparams.tta if tta is None else tta
        views = range(8) if use_tta else range(1)
        # Normalised once: every normalisation's statistics (channel, per-image min/max, median/MAD, peak) are
        # unchanged by a D4 view, so normalising then transforming gives the same views as the other way round.
        x = self.normalizer(x)
        log_probs = torch.stack([F.log_softmax(self.model(d4_transform(x, k)).double(), dim=1) for k in views]).mean(0)
        return self.calibrate(log_probs, prevalence=prevalence) if calibrated else log_probs

    def calibrate(self, log_probs: torch.Tensor, *, prevalence: float | None = None) -> torch.Tensor:
        """Calibrated logits from uncalibrated log-probabilities (as `predict_logits(calibrated=False)` gives):
        temperature, Platt bias and, for binary tasks, the prior shift to `prevalence`, all in log space.
        Unchanged when no calibration was fitted."""
        calibration = self.hparams.get("calibration")
        if prevalence is not None and self.hparams.num_classes != 2:
            raise InputError(f"--prevalence applies to lens finding (two classes); this is a {self.hparams.task} model")
        if calibration is None:
            return log_probs
        logits = apply_to_log_probs(log_probs, calibration["scale"], calibration["bias"])
        if prevalence is not None:
            logits[:, 1] += prior_shift(calibration, prevalence)
        return logits

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, *, tta: bool | None = None, calibrated: bool = True,
                      prevalence: float | None = None) -> torch.Tensor:
        """Class probabilities (float64): the softmax of `predict_logits`. `prevalence` (binary tasks)
        re-expresses them for a population with that fraction of positives, e.g. 1e-3 for a survey."""
        return F.softmax(self.predict_logits(x, tta=tta, calibrated=calibrated, prevalence=prevalence), dim=1)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=self.class_weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hparams.augment:
            x = random_d4(x)
        logits = self(x)
        loss = self._loss(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", self._loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y), sync_dist=True)
        self._val_outputs.append((F.softmax(logits, 1).detach(), y.detach()))

    def on_validation_epoch_end(self):
        if not self._val_outputs:
            return
        probs = torch.cat([p for p, _ in self._val_outputs])
        labels = torch.cat([y for _, y in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            probs = self.all_gather(probs).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        labels_np = labels.cpu().numpy()
        if len(np.unique(labels_np)) == self.hparams.num_classes:
            auc = roc_auc_ovr(labels_np, probs.float().cpu().numpy())["macro"]
            self.log("val/auc", float(auc), prog_bar=True, sync_dist=True)  # the same on every rank (gathered)

    def configure_optimizers(self):
        kind = torch.optim.AdamW if self.hparams.optimizer == "adamw" else torch.optim.Adam
        optimizer = kind(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}
        total_steps = int(self.trainer.estimated_stepping_batches)
        if self.hparams.scheduler == "onecycle":
            # at least two steps in each phase: with very few steps in all (a tiny data set), 20 % of them rounds
            # to zero steps of warm-up and OneCycleLR divides by zero
            total_steps = max(total_steps, 4)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=total_steps,
                                                            pct_start=min(0.5, max(0.2, 2.0 / total_steps)))
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
