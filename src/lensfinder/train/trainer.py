"""`get_trainer(run_dir, ...)`: the one place that owns checkpointing, history, early stopping and devices."""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..data.datamodule import epoch_seed
from ..data.layouts import atomic_path
from .history import HistoryCSV

# Lightning's advertising tip and a deprecation inside Lightning itself say nothing to our users.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: not str(record.msg).startswith("💡"))
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it, so a crash never leaves a torn checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class EpochSeed(Callback):
    """Reseed the global RNGs (augmentation, dropout) at the start of every epoch from (seed, epoch, rank), so that
    an epoch's random draws do not depend on what ran before it in this process: a resumed run repeats them."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, module):
        value = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)


def get_trainer(run_dir: Path, *, max_epochs: int, seed: int = 0, accelerator: str = "auto", devices: str | int = "auto",
                num_nodes: int = 1, strategy: str = "auto", precision: str = "32-true", early_stopping: int = 0,
                progress: bool = True, limit_train_batches: int | float | None = None, deterministic: bool = False,
                reload_train_data: bool = False) -> L.Trainer:
    """`reload_train_data`: ask the DataModule for a new training loader every epoch (a stream simulates new
    objects each epoch). The DataModule shares batches between DDP ranks itself (see data/datamodule.py)."""
    run_dir = Path(run_dir)
    callbacks: list[Callback] = [
        EpochSeed(seed),
        # Keep the checkpoint with the best validation loss (the report's choice), plus the last one for --resume.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", mode="min",
                        save_last=True, auto_insert_metric_name=False, enable_version_counter=False),
        HistoryCSV(run_dir / "history.csv"),
    ]
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=early_stopping))
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=int(devices) if str(devices).isdigit() else devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        limit_train_batches=limit_train_batches,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        deterministic=True if deterministic else None,
        reload_dataloaders_every_n_epochs=1 if reload_train_data else 0,
    )
