"""`train(config) -> Run`: the whole training job, importable; the CLI only parses arguments and calls it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..config import TrainConfig
from ..data.cache import open_packed, pack
from ..data.cubes import CubeDataset, CubeEpochs, LabelledCubes, is_cube_data
from ..data.datamodule import LensDataModule, PackedDataset, epoch_seed
from ..data.layouts import atomic_path, discover, held_out_listings, write_split_record, write_text_atomic
from ..data.normalize import channel_stats
from ..metrics import log_odds
from ..shipped import named_weights, shipped_weights
from ..validation import InputError
from .calibrate import choose_survey_thresholds, fit_calibration, validation_log_probs
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
    metadata = {"format": MODEL_FORMAT, "hparams": json.dumps(dict(module.hparams)),
                "lensfinder_version": versions()["lensfinder"]}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates owner-only files; a model is shared like any output


def versions() -> dict:
    """The versions a run or catalogue records (version.json): lensfinder, torch, lightning, numpy, python."""
    import platform

    from .. import __version__

    return {"lensfinder": __version__, "torch": str(torch.__version__), "lightning": str(L.__version__),
            "numpy": str(np.__version__), "python": platform.python_version()}


def load_model(path: Path) -> LensModule:
    """Rebuild a model from a run folder or a .safetensors file written by `export_model`, or from the name of a
    shipped weights file (`lensfinding-broad`: src/lensfinder/weights/lensfinding-broad.safetensors)."""
    path = named_weights(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise InputError(f"{path}: no trained model here (expected a run folder with model.safetensors, the file itself, "
                         "or the name of a shipped weights file: lensfinder.shipped_models() lists them)")
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


def _class_weights(counts: np.ndarray, kind: str) -> list[float] | None:
    """balanced: w_c = N / (K N_c), the report's N / (2 N_c) for two classes. `counts` may be shares (a stream)."""
    if kind == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    return (counts.sum() / (len(counts) * np.maximum(counts, 1e-12))).tolist()


# Settings that change how a run executes, not what it computes: free to differ on --resume.
RESUME_FREE = ("out", "progress", "num_workers", "cache_dir")


def _same_setting(name: str, given, saved) -> bool:
    if name == "data":
        return Path(given).resolve() == Path(saved).resolve()
    return given == saved or str(given) == str(saved)


def _resume_plan(config: TrainConfig, run_dir: Path) -> tuple[TrainConfig, Path, dict | None]:
    """The saved configuration to continue, its last checkpoint, and the epoch extension asked for (or None).
    Every setting `config` gives (not None) must equal the run's, except RESUME_FREE and a larger `epochs`."""
    saved_path, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved_path.is_file() or not last.is_file():
        raise InputError(f"{run_dir}: nothing to resume (needs config.yaml and checkpoints/last.ckpt from an earlier run)")
    saved = Run(run_dir).config
    changed = [(f.name, getattr(saved, f.name), getattr(config, f.name)) for f in fields(TrainConfig)
               if f.name not in RESUME_FREE and getattr(config, f.name) is not None
               and not _same_setting(f.name, getattr(config, f.name), getattr(saved, f.name))]
    others = [c for c in changed if c[0] != "epochs"]
    if others:
        listed = "; ".join(f"--{name.replace('_', '-')}: run {before!r}, given {given!r}" for name, before, given in others)
        raise InputError(f"{run_dir}: --resume continues the run as it was started, but these settings differ from its "
                         f"config.yaml: {listed}. Drop them (or pass the run's values) to resume, or start a new run "
                         f"in another --out")
    extension = None
    if changed:
        _, before, given = changed[0]
        if given < before:
            raise InputError(f"{run_dir}: --epochs {given} is fewer than the run's {before}; resume without --epochs "
                             f"(the run's best checkpoint is checkpoints/best.ckpt whenever you stop it)")
        if saved.scheduler != "plateau":
            raise InputError(f"{run_dir}: --epochs {given} would extend a run whose {saved.scheduler} learning-rate "
                             f"schedule was laid out for {before} epochs and ends there; only plateau-scheduled runs can "
                             f"be extended: resume without --epochs, or start a new run with --epochs {given}")
        extension = {"epochs_before": before, "epochs": given}
    free = {name: getattr(config, name) for name in RESUME_FREE if name != "out" and getattr(config, name) is not None}
    merged = replace(saved, **free, out=str(run_dir), epochs=extension["epochs"] if extension else saved.epochs)
    return merged.resolved(), last, extension


def _stream(config: TrainConfig, epoch: int, rank: int):
    """The simulated stream of one epoch on one rank: new objects every epoch, none shared between ranks."""
    from ..simulate import StreamingDataset

    return StreamingDataset(config.task, preset=config.stream_preset, seed=epoch_seed(config.seed, epoch, rank, 1),
                            batch_size=config.batch_size, lens_fraction=config.lens_fraction or 0.5)


def _stream_composition(config: TrainConfig, n_classes: int) -> np.ndarray:
    """The share of each class the stream draws: lenses at `lens_fraction`; substructure classes cycle evenly."""
    if config.task == "lensfinding":
        return np.array([1.0 - config.lens_fraction, config.lens_fraction])
    return np.full(n_classes, 1.0 / n_classes)


def _stream_sample(config: TrainConfig, n: int) -> np.ndarray:
    """`n` stream images drawn apart from the training epochs (for channel statistics when nothing is packed)."""
    stream = iter(_stream(config, 2**31, 0))
    return np.stack([next(stream)[0].numpy() for _ in range(n)])


def train(config: TrainConfig, *, resume: bool = False) -> Run:
    run_dir = Path(config.out)
    config, ckpt_path, extension = _resume_plan(config, run_dir) if resume else (config.resolved(), None, None)
    L.seed_everything(config.seed, workers=True, verbose=False)
    trainer = get_trainer(run_dir, max_epochs=config.epochs, seed=config.seed, accelerator=config.accelerator,
                          devices=config.devices, num_nodes=config.num_nodes, strategy=config.strategy,
                          precision=config.precision, early_stopping=config.early_stopping, progress=config.progress,
                          limit_train_batches=config.steps_per_epoch if config.stream else None,
                          deterministic=bool(config.deterministic),
                          reload_train_data=bool(config.stream) or is_cube_data(config.data))
    # Only the first process checks and writes the run folder: the others (launched by Lightning for DDP, or by
    # srun / torchrun) find it already written by that process.
    chief = trainer.is_global_zero
    if chief and not resume and (run_dir / "config.yaml").exists():
        raise InputError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out")

    cubes = LabelledCubes(Path(config.data), config.task) if is_cube_data(config.data) else None
    if cubes is not None:  # labelled cubes: read in blocks where they are, never packed (data/cubes.py)
        held = cubes.held_out(val_fraction=config.val_fraction, seed=config.seed, test_fraction=config.test_fraction)
        val_images = cubes.rows(held["val"])
        val_labels, class_names = val_images.labels, cubes.class_names
    else:
        splits = discover(Path(config.data), config.task)
        held = held_out_listings(splits, val_fraction=config.val_fraction, seed=config.seed,
                                 test_fraction=config.test_fraction)
        train_listing, val_listing = held["train"], held["val"]
        cache_dir = Path(config.cache_dir) if config.cache_dir else None
        val_pack = pack(val_listing, cache_dir=cache_dir, allow_pickle=config.allow_pickle)
        val_images = open_packed(val_pack)
        val_labels, class_names = val_listing.labels, train_listing.class_names
    if config.stream:  # the training split is never read: the stream replaces it
        train_images = _stream_sample(config, min(256, config.steps_per_epoch * config.batch_size))
        class_counts = _stream_composition(config, len(class_names))
        source = f"the {config.stream_preset} stream"
    elif cubes is not None:
        train_images = cubes.rows(held["train"])
        class_counts = np.bincount(train_images.labels, minlength=len(class_names))
        source = f"{config.data} (training split)"
    else:
        train_pack = pack(train_listing, cache_dir=cache_dir, allow_pickle=config.allow_pickle)
        train_images = open_packed(train_pack)
        class_counts = train_listing.class_counts()
        source = f"{config.data} (training split)"
    channels, height, width = train_images.shape[1:]
    if height != width:
        raise InputError(f"{source}: expected square images, found {height}x{width}")
    if val_images.shape[1:] != train_images.shape[1:]:
        raise InputError(f"{config.data}: validation images have shape {val_images.shape[1:]}, training images from "
                         f"{source} {train_images.shape[1:]}; validate on data of the training shape")

    normalization = {"kind": config.normalization, "mean": None, "std": None, "softening": 1.0,
                     "peak_floor": config.peak_floor}
    if config.normalization == "channel":
        mean, std = channel_stats(train_images)  # training images only, as in the report
        normalization.update(mean=mean.tolist(), std=std.tolist())
    if chief:  # written only once the data passed its checks, so a refused run leaves no run behind
        if cubes is not None and cubes.seeded:
            write_text_atomic(run_dir / "split.json", json.dumps(cubes.split_record(config.seed)))
        elif cubes is None and ("val" not in splits or "test" in held):
            write_split_record(run_dir / "split.json", val_listing, seed=config.seed, val_fraction=config.val_fraction,
                               test=held.get("test"), test_fraction=config.test_fraction)
        if ckpt_path is None or extension:
            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        if ckpt_path is None:  # the versions that started the run
            write_text_atomic(run_dir / "version.json", json.dumps(versions(), indent=1))
        write_text_atomic(run_dir / "normalization.json", json.dumps(normalization, indent=1))
        if ckpt_path is not None:
            _record_resume(run_dir, ckpt_path, extension)

    module = LensModule(
        task=config.task, model_name=config.model, in_channels=channels, num_classes=len(class_names),
        image_size=height, class_names=class_names, normalization=normalization,
        class_weights=_class_weights(class_counts, config.class_weights), lr=config.lr,
        weight_decay=config.weight_decay, optimizer=config.optimizer, scheduler=config.scheduler,
        augment=config.augment, tta=config.tta,
        preset=config.stream_preset if config.stream else cubes.preset if cubes is not None
        else _data_preset(Path(config.data)),
    )
    if config.init:
        parent = _init_from(module, config)
        if chief:
            write_text_atomic(run_dir / "parent.json", json.dumps(parent, indent=1))
    if config.stream:
        train_set = partial(_stream, config)
    elif cubes is not None:
        train_set = CubeEpochs(train_images, batch_size=config.batch_size, mode=config.sampling, seed=config.seed)
    else:
        train_set = PackedDataset(train_pack, train_listing.labels)
    val_set = CubeDataset(val_images) if cubes is not None else PackedDataset(val_pack, val_listing.labels)
    datamodule = LensDataModule(train_set, val_set, batch_size=config.batch_size,
                                num_workers=config.num_workers, sampling=config.sampling, seed=config.seed)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    if chief:
        best = trainer.checkpoint_callback.best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]  # our own checkpoint
        module.load_state_dict(state)
        module = module.cpu()
        log_probs = validation_log_probs(module, val_images)
        calibration = fit_calibration(log_probs, torch.as_tensor(val_labels))
        module.hparams.calibration = calibration
        write_text_atomic(run_dir / "calibration.json", json.dumps(calibration, indent=1))
        if len(class_names) == 2 and len(np.unique(val_labels)) == 2:
            score = log_odds(module.calibrate(log_probs).numpy(), positive=1)
            record = choose_survey_thresholds(val_labels, score, data=config.data, split="val", tta=bool(config.tta))
            write_text_atomic(run_dir / "thresholds.json", json.dumps(record, indent=1))
        export_model(module, run_dir / "model.safetensors")
        plot_history(read_history(run_dir / "history.csv"), run_dir / "figures" / "history.png")
    return Run(run_dir)


def _init_from(module: LensModule, config: TrainConfig) -> dict:
    """Copy trained weights (`config.init`: "shipped" or a run folder / .safetensors file) into `module`, freeze
    what `config.freeze` asks, and return the parent's record (name, file, SHA-256), also kept in the module's
    hyperparameters so that the exported model carries it."""
    import hashlib

    hp = module.hparams
    if config.init == "shipped":
        path = shipped_weights(config.task, channels=hp.in_channels, size=hp.image_size)
    else:
        path = Path(config.init)
        path = path / "model.safetensors" if path.is_dir() else path
    parent = load_model(path)
    php = parent.hparams
    problems = [f"{name}: parent {php[name]!r}, this run {hp[name]!r}"
                for name in ("task", "model_name", "in_channels", "num_classes", "class_names")
                if php[name] != hp[name]]
    if problems:
        raise InputError(f"{path}: cannot start this run from these weights ({'; '.join(problems)}); pass --model "
                         f"{php['model_name']} and data of the parent's task and bands, or train without --init")
    module.model.load_state_dict(parent.model.state_dict())
    frozen = {"none": (), "stem": ("stem",), "body": tuple(n for n, _ in module.model.named_children() if n != "head")}
    for name in frozen[config.freeze]:
        for p in getattr(module.model, name).parameters():
            p.requires_grad_(False)
    record = {"init": config.init, "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "model": php["model_name"], "preset": php.get("preset"), "freeze": config.freeze}
    hp["parent"] = record
    return record


def _record_resume(run_dir: Path, ckpt_path: Path, extension: dict | None) -> None:
    """Append to resumes.json where this resume starts (the checkpoint's epoch and global step) and any extension."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own checkpoint
    path = run_dir / "resumes.json"
    record = json.loads(path.read_text()) if path.is_file() else []
    record.append({"checkpoint": str(ckpt_path.relative_to(run_dir)), "checkpoint_epoch": int(checkpoint["epoch"]),
                   "global_step": int(checkpoint["global_step"]), **(extension or {})})
    write_text_atomic(path, json.dumps(record, indent=1))
