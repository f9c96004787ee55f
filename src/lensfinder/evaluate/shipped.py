"""The weights shipped inside the package: which file serves a task, preset and input shape, and a run folder
around one so that `evaluate` scores it like any trained run.

Every shipped file is a `train.run.export_model` safetensors whose metadata carries its task, input channels,
image size and the simulator preset it was trained on; `<task>.safetensors` is each task's default.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml
from safetensors import SafetensorError
from safetensors.torch import safe_open

from ..config import TrainConfig
from ..data.layouts import atomic_path, write_text_atomic
from ..train.run import load_model
from ..validation import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def shipped_catalog(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """One entry per shipped file: path, task, preset, channels, size, model (read from metadata only)."""
    entries = []
    for path in sorted(Path(weights_dir).glob("*.safetensors")) if Path(weights_dir).is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as handle:
                hparams = json.loads((handle.metadata() or {}).get("hparams", "{}"))
        except (SafetensorError, OSError, json.JSONDecodeError):
            continue
        entries.append({"path": path, "task": hparams.get("task"), "preset": hparams.get("preset"),
                        "channels": hparams.get("in_channels"), "size": hparams.get("image_size"),
                        "model": hparams.get("model_name")})
    return entries


def _describe(entries: list[dict]) -> str:
    return "; ".join(f"{e['path'].name} ({e['task']}, preset {e['preset']}, {e['channels']}x{e['size']}x{e['size']})"
                     for e in entries) or "none"


def shipped_weights(task: str, *, preset: str | None = None, channels: int | None = None, size: int | None = None,
                    weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The shipped weights of `task` whose input matches: trained on `preset`, taking `channels` x `size` x `size`
    images (each None: any). Several matches: `<task>.safetensors` first, else the first by name."""
    catalog = shipped_catalog(weights_dir)
    for_task = [e for e in catalog if e["task"] == task]
    found = [e for e in for_task if (preset is None or e["preset"] == preset)
             and (channels is None or e["channels"] == channels) and (size is None or e["size"] == size)]
    if not found:
        wanted = ", ".join(f"{k} {v}" for k, v in (("preset", preset), ("channels", channels), ("size", size))
                           if v is not None)
        raise InputError(f"no shipped weights for task {task!r}{' with ' + wanted if wanted else ''}; shipped: "
                         f"{_describe(for_task or catalog)}. Pass --preset with one of those, or --run with a "
                         "trained run folder")
    default = [e for e in found if e["path"].name == f"{task}.safetensors"]
    return (default or found)[0]["path"]


def input_shape(inputs: list[Path]) -> tuple[int, int] | None:
    """(channels, size) of the first .npy file among `inputs` (files or folders), read from its header only;
    None when there is none (FITS inputs, pickled arrays): the caller then takes the task's default weights."""
    for item in map(Path, inputs):
        first = next(iter(sorted(item.rglob("*.npy"))), None) if item.is_dir() else item
        if first is None or first.suffix != ".npy" or not first.is_file():
            continue
        try:
            shape = np.load(first, mmap_mode="r").shape
        except (ValueError, OSError):
            return None
        if len(shape) == 2:
            return 1, int(shape[-1])
        if len(shape) == 3:
            return int(shape[0]), int(shape[-1])
        return None
    return None


def shipped_for_inputs(task: str, inputs: list[Path], *, preset: str | None = None) -> Path:
    """The shipped weights for `task` that take images shaped like `inputs` (or trained on `preset`)."""
    shape = input_shape(inputs)
    channels, size = shape if shape is not None else (None, None)
    if preset is not None:
        return shipped_weights(task, preset=preset, channels=channels, size=size)
    if shape is None:
        return shipped_weights(task)
    return shipped_weights(task, channels=channels, size=size)


def shipped_run(task: str, data: Path, run_dir: Path, *, weights: Path | None = None) -> Path:
    """A run folder around shipped weights of `task` (default: `shipped_weights(task)`), so that `evaluate`
    scores them like any trained run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(weights) if weights is not None else shipped_weights(task)
    module = load_model(weights)
    with atomic_path(run_dir / "model.safetensors") as tmp:
        shutil.copyfile(weights, tmp)
    config = TrainConfig(task=task, data=str(data), out=str(run_dir), model=module.hparams.model_name,
                         recipe="lensfinder", tta=module.hparams.tta, progress=False).resolved()
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    return run_dir
