"""An endless stream of freshly simulated images for training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import population as pop
from .engine import LensfindingSimulator, SubstructureSimulator
from .presets import load_preset


class StreamingDataset(IterableDataset):
    """Yields ``(image float32 tensor (C, H, W), int label)`` forever, simulating ``batch_size``
    objects at a time. Labels: substructure ``no, sphere, vort`` = 0, 1, 2 (cycling, so the stream
    is balanced); lens finding nonlens 0, lens 1 with P(lens) = ``lens_fraction``.

    Object ``i`` of DataLoader worker ``w`` is seeded by (seed, task, "stream", w, i): the stream is
    deterministic for a seed and disjoint between workers, seeds, and the written splits.
    """

    def __init__(self, task: str, *, preset: str, seed: int = 0, batch_size: int = 64, lens_fraction: float = 0.5,
                 device: str = "cpu", distances: str | None = None, noise: bool | None = None):
        if task not in ("substructure", "lensfinding"):
            raise ValueError(f"task: expected 'substructure' or 'lensfinding', found {task!r}")
        if not 0.0 <= lens_fraction <= 1.0:
            raise ValueError(f"lens_fraction: expected a number in [0, 1], found {lens_fraction!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
        self.task, self.preset, self.seed = task, preset, int(seed)
        self.batch_size, self.lens_fraction, self.device = int(batch_size), float(lens_fraction), device
        self.distances, self.noise = distances, noise
        self.config = load_preset(preset, task=task)  # fail early on a bad preset
        self.classes = pop.SUBSTRUCTURE_CLASSES if task == "substructure" else pop.LENSFINDING_CLASSES

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        index = 0
        if self.task == "substructure":
            sim = SubstructureSimulator(self.config, distances=self.distances, device=self.device)
            use_noise = self.config["noise"]["default"] if self.noise is None else bool(self.noise)
            scale = 1.0 if use_noise else self.config["output_scale"]
        else:
            sim = LensfindingSimulator(self.config, device=self.device)
        while True:
            if self.task == "substructure":
                yield from self._substructure_batch(sim, worker, index, use_noise, scale)
            else:
                yield from self._lensfinding_batch(sim, worker, index)
            index += self.batch_size

    def _rngs(self, worker: int, i: int):
        return pop.object_rngs(self.seed, self.task, "stream", 0, i, worker=worker)

    def _substructure_batch(self, sim, worker, start, use_noise, scale):
        items = []
        for i in range(start, start + self.batch_size):
            label = i % 3
            rng, noise_rng = self._rngs(worker, i)
            items.append((label, pop.sample_substructure(rng, self.classes[label], sim.preset,
                                                         distances_mpc=sim.distances_mpc), noise_rng))
        images: dict[int, np.ndarray] = {}
        for label in range(3):  # render each class together (same number of point masses)
            idx = [n for n, it in enumerate(items) if it[0] == label]
            if idx:
                rendered = sim.render([items[n][1] for n in idx])[:, 0].cpu().numpy()
                images.update(zip(idx, rendered))
        for n, (label, params, noise_rng) in enumerate(items):
            img = images[n].astype(np.float64)
            img = sim.add_noise(img, params, noise_rng) if use_noise else img * scale
            yield torch.from_numpy(img.astype(np.float32)[None]), label

    def _lensfinding_batch(self, sim, worker, start):
        from .writer import lensfinding_rows

        params, noise_rngs = [], []
        for i in range(start, start + self.batch_size):
            rng, noise_rng = self._rngs(worker, i)
            is_lens = bool(rng.uniform() < self.lens_fraction)
            params.append(pop.sample_lensfinding(rng, is_lens, sim.preset))
            noise_rngs.append(noise_rng)
        images, _ = lensfinding_rows(sim, params, sim.render(params), noise_rngs)
        for p, img in zip(params, images):
            yield torch.from_numpy(img), int(p["theta_e_arcsec"] > 0)
