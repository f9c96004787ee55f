"""`train(config) -> Run`: the whole training job, importable; the CLI only parses arguments and calls it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..config import TrainConfig
from ..data.cache import open_packed, pack
from ..data.datamodule import LensDataModule, PackedDataset, balanced_sampler
from ..data.layouts import Listing, atomic_path, discover, held_out_listings, write_split_record, write_text_atomic
from ..data.normalize import channel_stats
from ..validation import InputError
from .calibrate import fit_calibration, validation_log_probs
from .history import plot_history, read_history
from .module import LensModule
from .trainer import get_trainer

MODEL_FORMAT = "lensfinder-model-v1"


@dataclass
class Run:
    """A run folder: config.yaml, split.json, checkpoints/, history.csv, model.safetensors, metrics.json, figures/."""

    path: Path

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(yaml.safe_load((self.path / "config.yaml").read_text()), source=str(self.path / "config.yaml"))

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"


def export_model(module: LensModule, path: Path) -> None:
    """Weights plus everything needed to rebuild the model and its input pipeline, in one file that cannot run code."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"format": MODEL_FORMAT, "hparams": json.dumps(dict(module.hparams))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates owner-only files; a model is shared like any output


def load_model(path: Path) -> LensModule:
    """Rebuild a model from a run folder or a .safetensors file written by `export_model`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise InputError(f"{path}: no trained model here (expected a run folder with model.safetensors, or the file itself)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a lensfinder model (format {metadata.get('format')!r}, expected {MODEL_FORMAT!r})")
    module = LensModule(**json.loads(metadata["hparams"]))
    module.load_state_dict(tensors)
    return module.eval()


def _data_preset(root: Path) -> str | None:
    """The simulator preset that made a data root, when it was made by `lensfinder simulate`."""
    record = Path(root) / "simulation.yaml"
    if record.is_file():
        return (yaml.safe_load(record.read_text()) or {}).get("preset")
    return None


def _class_weights(listing: Listing, kind: str) -> list[float] | None:
    """balanced: w_c = N / (K N_c), the report's N / (2 N_c) for two classes."""
    if kind == "none":
        return None
    counts = listing.class_counts()
    return (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()


def _start(config: TrainConfig, resume: bool) -> tuple[TrainConfig, Path | None]:
    run_dir = Path(config.out)
    saved = run_dir / "config.yaml"
    if resume:
        last = run_dir / "checkpoints" / "last.ckpt"
        if not saved.is_file() or not last.is_file():
            raise InputError(f"{run_dir}: nothing to resume (needs config.yaml and checkpoints/last.ckpt from an earlier run)")
        return Run(run_dir).config, last
    if saved.exists():
        raise InputError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out")
    return config.resolved(), None


def train(config: TrainConfig, *, resume: bool = False) -> Run:
    config, ckpt_path = _start(config, resume)
    run_dir = Path(config.out)
    L.seed_everything(config.seed, workers=True, verbose=False)

    splits = discover(Path(config.data), config.task)
    held = held_out_listings(splits, val_fraction=config.val_fraction, seed=config.seed, test_fraction=config.test_fraction)
    train_listing, val_listing = held["train"], held["val"]
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    train_pack = pack(train_listing, cache_dir=cache_dir, allow_pickle=config.allow_pickle)
    val_pack = pack(val_listing, cache_dir=cache_dir, allow_pickle=config.allow_pickle)
    train_images = open_packed(train_pack)
    channels, height, width = train_images.shape[1:]
    if height != width:
        raise InputError(f"{config.data}: expected square images, found {height}x{width}")
    if open_packed(val_pack).shape[1:] != train_images.shape[1:]:
        raise InputError(f"{config.data}: validation images have shape {open_packed(val_pack).shape[1:]}, "
                         f"training images {train_images.shape[1:]}")

    if "val" not in splits or "test" in held:
        write_split_record(run_dir / "split.json", val_listing, seed=config.seed, val_fraction=config.val_fraction,
                           test=held.get("test"), test_fraction=config.test_fraction)
    if ckpt_path is None:  # written only once the data passed its checks, so a refused run leaves no run behind
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    normalization = {"kind": config.normalization, "mean": None, "std": None, "softening": 1.0,
                     "peak_floor": config.peak_floor}
    if config.normalization == "channel":
        mean, std = channel_stats(train_images)  # training split only, as in the report
        normalization.update(mean=mean.tolist(), std=std.tolist())
    write_text_atomic(run_dir / "normalization.json", json.dumps(normalization, indent=1))

    module = LensModule(
        task=config.task, model_name=config.model, in_channels=channels, num_classes=len(train_listing.class_names),
        image_size=height, class_names=train_listing.class_names, normalization=normalization,
        class_weights=_class_weights(train_listing, config.class_weights), lr=config.lr,
        weight_decay=config.weight_decay, optimizer=config.optimizer or "adam", scheduler=config.scheduler,
        augment=config.augment, tta=config.tta,
        preset=_data_preset(Path(config.data)),
    )
    trainer = get_trainer(run_dir, max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
                          num_nodes=config.num_nodes, strategy=config.strategy, precision=config.precision,
                          early_stopping=config.early_stopping, progress=config.progress,
                          limit_train_batches=config.steps_per_epoch if config.stream else None)
    if config.stream:
        from ..simulate import StreamingDataset

        # Each DDP rank gets its own stream; the dataset itself splits streams between loader workers.
        train_set = StreamingDataset(config.task, preset=config.stream_preset, seed=config.seed + 100_003 * trainer.global_rank,
                                     batch_size=config.batch_size)
    else:
        train_set = PackedDataset(train_pack, train_listing.labels)
    sampler = balanced_sampler(train_listing.labels, seed=config.seed) if config.sampling == "balanced" and not config.stream else None
    datamodule = LensDataModule(train_set, PackedDataset(val_pack, val_listing.labels), batch_size=config.batch_size,
                                num_workers=config.num_workers, shuffle_train=not config.stream, train_sampler=sampler)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]  # our own checkpoint
        module.load_state_dict(state)
        module = module.cpu()
        val_images = open_packed(val_pack)
        calibration = fit_calibration(validation_log_probs(module, val_images), torch.as_tensor(val_listing.labels))
        module.hparams.calibration = calibration
        write_text_atomic(run_dir / "calibration.json", json.dumps(calibration, indent=1))
        export_model(module, run_dir / "model.safetensors")
        plot_history(read_history(run_dir / "history.csv"), run_dir / "figures" / "history.png")
    return Run(run_dir)
