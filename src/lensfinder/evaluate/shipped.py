"""The weights shipped inside the package: which file serves a task, preset and input shape, and a run folder
around one so that `evaluate` scores it like any trained run.

Every shipped file is a `train.run.export_model` safetensors whose metadata carries its task, input channels,
image size and the simulator preset it was trained on; `<task>.safetensors` is each task's default.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml

from ..config import TrainConfig
from ..data.layouts import atomic_path, write_text_atomic
from ..shipped import WEIGHTS_DIR, shipped_catalog, shipped_weights  # noqa: F401  (the registry; importable from here)
from ..train.run import load_model


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
