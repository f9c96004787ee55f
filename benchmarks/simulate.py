"""Simulation speed: lensfinder (batched, caustics) vs lenstronomy (one image at a time, as its users
run it), measured in the same run. Prints a table and writes benchmarks/results/simulate.json.

    python benchmarks/simulate.py [--quick] [--threads 1] [--workers N] [--device cpu]

Both sides do the same work per image: sample parameters, render the noiseless image (same
profiles, PSF, no supersampling) and add noise; file writing is excluded. lensfinder is timed
twice: one process with ``--threads`` torch threads (default 1, like lenstronomy's numpy: the
like-for-like column), and through the process pool of ``lensfinder simulate --workers``, with
``--workers`` processes of one torch thread each (default one per core). lenstronomy runs one image at a time in
one process, as its users run it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _env import write_result  # noqa: E402

from lensfinder.simulate import population as pop  # noqa: E402
from lensfinder.simulate import reference  # noqa: E402
from lensfinder.simulate.engine import LensfindingSimulator, SubstructureSimulator  # noqa: E402
from lensfinder.simulate import writer  # noqa: E402


def _rate(fn, n_items: int, min_seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


class Ours:
    """lensfinder's work for one batch of objects (their indices): sample, render batched, add noise;
    returns the indices, as the writer's renderers return manifest rows. Picklable, so the writer's
    worker pool can run it (each worker builds its simulator once)."""

    def __init__(self, preset: str, cls: str, device: str):
        self.preset, self.cls, self.device = preset, cls, device
        self._sim = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sim": None}

    def __call__(self, index: list[int]) -> list[int]:
        lens_finding = self.preset == "lsst-gri"
        if self._sim is None:
            self._sim = (LensfindingSimulator if lens_finding else SubstructureSimulator)(self.preset, device=self.device)
        sim = self._sim
        if lens_finding:
            is_lens = self.cls == "lens"
            rngs = [pop.object_rngs(0, "lensfinding", "train", int(is_lens), i) for i in index]
            params = [pop.sample_lensfinding(r[0], is_lens, sim.preset) for r in rngs]
            writer.lensfinding_rows(sim, params, sim.render(params), [r[1] for r in rngs])
            return index
        rngs = [pop.object_rngs(0, "substructure", "train", 0, i) for i in index]
        params = [pop.sample_substructure(r[0], self.cls, sim.preset, distances_mpc=sim.distances_mpc) for r in rngs]
        images = sim.render(params)[:, 0].cpu().numpy().astype(np.float64)
        if sim.preset["noise"]["default"]:
            images = [sim.add_noise(im, p, r[1]) for im, p, r in zip(images, params, rngs)]
        return index


def rate_ours(ours: Ours, batch: int, seconds: float, workers: int) -> float:
    """Images/s of `ours` on batches of `batch` objects: in this process, or through the writer's
    pool of `workers` processes (one torch thread each), as `lensfinder simulate --workers` runs,
    handed 8 batches per task."""
    starts = itertools.count(0, batch)
    if workers == 1:
        return _rate(lambda: ours(list(range(start := next(starts), start + batch))), batch, seconds)
    per_task = 8 * batch
    tasks = (list(range(start, start + per_task)) for start in itertools.count(0, per_task))
    results = writer._rendered(ours, tasks, batch, workers)
    for _ in range(2 * workers):  # start-up and warm-up in every process
        next(results)
    done, start = 0, time.perf_counter()
    for rows in results:
        done += len(rows)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            results.close()  # leaves the pool: its last tasks finish outside the timed window
            return done / elapsed
    raise AssertionError("the batch stream is endless")


def rate_lenstronomy(preset: str, cls: str, seconds: float, device: str) -> float:
    """One image at a time, as lenstronomy's users run it: same sampling, lenstronomy rendering,
    the same noise recipe."""
    counter = iter(range(10**9))
    if preset == "lsst-gri":
        sim, is_lens = LensfindingSimulator(preset, device=device), cls == "lens"

        def theirs():  # the lenstronomy-expressible part (SIE+shear, Sersic source, clumps; Sersic light), 3 bands
            rng, noise_rng = pop.object_rngs(1, "lensfinding", "train", int(is_lens), next(counter))
            p = pop.sample_lensfinding(rng, is_lens, sim.preset)
            model = np.stack([reference.render_lens(sim, p, band) for band in range(3)])
            return sim.noisy_batch(torch.from_numpy(model)[None], None, [False], [noise_rng], [p])[0]
    else:
        sim = SubstructureSimulator(preset, device=device)

        def theirs():
            rng, noise_rng = pop.object_rngs(1, "substructure", "train", 0, next(counter))
            p = pop.sample_substructure(rng, cls, sim.preset, distances_mpc=sim.distances_mpc)
            image = reference.render_substructure(sim, p)
            if not sim.preset["noise"]["default"]:
                return image
            if sim.preset["noise"]["kind"] == "deeplense-poisson":  # DeepLenseSim's own numpy noise recipe
                return reference.deeplense_noise(image, p["exposure_s"], sim.preset["noise"]["background_rms"], noise_rng)
            return sim.add_noise(image, p, noise_rng)

    return _rate(theirs, 1, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per lensfinder process")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="lensfinder processes for the machine-wide column (default: one per core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="run only cases whose 'preset/class' contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = 1.0 if args.quick else 8.0
    rows = []
    cases = [("deeplense-model-i", c) for c in pop.SUBSTRUCTURE_CLASSES]
    cases += [("deeplense-model-iii", c) for c in pop.SUBSTRUCTURE_CLASSES]
    cases += [("lsst-gri", c) for c in pop.LENSFINDING_CLASSES]
    cases = [(p, c) for p, c in cases if args.only in f"{p}/{c}"]
    print(f"{'preset':22s} {'class':7s} {'lensfinder 1 proc':>18s} {f'{args.workers} procs':>10s} "
          f"{'lenstronomy':>12s} {'ratio 1':>8s} {f'ratio {args.workers}':>8s}   (img/s)")
    for preset, cls in cases:
        batch = 32 if preset == "lsst-gri" else 8 if preset == "deeplense-model-i" else 32
        one = rate_ours(Ours(preset, cls, args.device), batch, seconds, 1)
        many = rate_ours(Ours(preset, cls, args.device), batch, seconds, args.workers) if args.workers > 1 else one
        theirs = rate_lenstronomy(preset, cls, seconds, args.device)
        rows.append({"preset": preset, "class": cls, "lensfinder_img_s": one, "lensfinder_workers_img_s": many,
                     "lenstronomy_img_s": theirs, "ratio": one / theirs, "ratio_workers": many / theirs})
        print(f"{preset:22s} {cls:7s} {one:18.1f} {many:10.1f} {theirs:12.1f} {one / theirs:7.1f}x "
              f"{many / theirs:7.1f}x", flush=True)
    path = write_result("simulate", {"quick": args.quick, "threads": args.threads, "workers": args.workers,
                                     "device": args.device, "seconds_per_case": seconds, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
