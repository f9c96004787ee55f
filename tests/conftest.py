"""Tiny data sets written by the tests themselves, in both DeepLense layouts."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def _ring(size: int, radius: float, width: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2 + rng.normal(0, 0.5, 2)[:, None, None]
    return np.exp(-0.5 * ((np.hypot(xx, yy) - radius) / width) ** 2)


def substructure_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ring (the 'Einstein ring'), plus point-like blobs for class 1 and a bar for class 2: easy to learn."""
    image = _ring(size, size / 4, 1.5, rng) + rng.normal(0, 0.05, (size, size))
    if label == 1:
        for _ in range(3):
            y, x = rng.integers(2, size - 2, 2)
            image[y - 1 : y + 2, x - 1 : x + 2] += 1.5
    elif label == 2:
        image[size // 2 - 1 : size // 2 + 1, size // 4 : 3 * size // 4] += 1.5
    return image.astype(np.float32)


def make_substructure_layout(root: Path, *, per_class: dict[str, int], size: int = 32, seed: int = 0,
                             shape: str = "chw") -> Path:
    """ROOT/<split>/<class>/*.npy; `shape` is 'chw' (1, H, W) or 'hw' (H, W)."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(("no", "sphere", "vort")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = substructure_image(label, size, rng)
                np.save(folder / f"{name}_{i:04d}.npy", image[None] if shape == "chw" else image)
    return root


def lensfinding_image(is_lens: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    galaxy = np.exp(-np.hypot(xx, yy) / 2.0)
    image = np.stack([0.5 * galaxy, 0.8 * galaxy, galaxy]) + rng.normal(0, 0.02, (3, size, size))
    if is_lens:
        image += np.array([1.0, 0.6, 0.3])[:, None, None] * 0.6 * _ring(size, size / 5, 1.2, rng)
    return image.astype(np.float32)


def make_lensfinding_layout(root: Path, *, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """ROOT/{train,test}_{lenses,nonlenses}/*.npy, (3, size, size) each."""
    rng = np.random.default_rng(seed)
    for folder_name, n in counts.items():
        folder = root / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(folder / f"obj_{i:05d}.npy", lensfinding_image(folder_name.endswith("_lenses"), size, rng))
    return root


HAND_SET_GAIN = 40.0  # the hand-set lens model: logit(lens) - logit(nonlens) = gain * mean pixel of a cutout


def hand_set_lens_model(path=None, *, gain: float = HAND_SET_GAIN):
    """report-cnn3 on 3x8x8 cutouts, weights set so that for a cutout of non-negative pixels the logits are
    (0, gain * mean pixel): every convolution averages the channels at the centre tap, batch norms are the
    identity, the first dense layer averages its inputs and the last puts `gain` times that on `lens`.
    Max pooling keeps a constant image constant, so constant cutouts give exactly (0, gain * value).
    Returns the module (eval mode), exported to `path` as well when given."""
    import torch

    from lensfinder.train.module import LensModule
    from lensfinder.train.run import export_model

    module = LensModule(task="lensfinding", model_name="report-cnn3", in_channels=3, num_classes=2, image_size=8,
                        class_names=["nonlens", "lens"], normalization={"kind": "none"}, class_weights=None, lr=1e-3,
                        weight_decay=0.0, scheduler="plateau", augment=False, tta=False)
    with torch.no_grad():
        for layer in module.model.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
                layer.bias.zero_()
                layer.weight[:, :, 1, 1] = 1.0 / layer.in_channels
            elif isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.zero_()
                layer.running_var.fill_(1.0 - layer.eps)
                layer.weight.fill_(1.0)
                layer.bias.zero_()
        first, last = module.model.head[0], module.model.head[-1]
        first.weight.fill_(1.0 / first.in_features)
        first.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        last.weight[1] = gain / last.in_features
    module.eval()
    if path is not None:
        export_model(module, path)
    return module


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSFINDER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def substructure_root(tmp_path) -> Path:
    return make_substructure_layout(tmp_path / "t1", per_class={"train": 24, "val": 8, "test": 10})


@pytest.fixture
def lensfinding_root(tmp_path) -> Path:
    return make_lensfinding_layout(tmp_path / "t2", counts={"train_lenses": 20, "train_nonlenses": 80,
                                                            "test_lenses": 10, "test_nonlenses": 60})


def sigkill_part_way_then_resume(command: Callable[[Path], list[str]], killed: Path, *, pattern: str, at_least: int,
                                 total: int) -> None:
    """Start `command(killed)`, SIGKILL it once `at_least` files match `pattern` under `killed` (and before all
    `total` are written), then run the same command again to the end: what a user's interrupted run does."""
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # generous: on a loaded machine the child's imports alone can take minutes
    while time.time() < deadline and proc.poll() is None and len(list(killed.glob(pattern))) < at_least:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(killed.glob(pattern)))
    assert 0 < written < total, f"{written} of {total} files written when killed; expected part of them"
    subprocess.run(command(killed), check=True, capture_output=True)
