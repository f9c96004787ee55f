"""Simulation speed: lensfinder (batched, caustics) vs lenstronomy (one image at a time, as its users
run it), measured in the same run. Prints a table and writes benchmarks/results/simulate.json.

    python benchmarks/simulate.py [--quick] [--threads 1] [--device cpu]

Both sides do the same work per image: sample parameters, render the noiseless image (same
profiles, PSF, no supersampling) and add noise; file writing is excluded. torch uses ``--threads``
CPU threads (default 1, like lenstronomy's numpy, and the fair choice on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
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
from lensfinder.simulate.writer import lensfinding_rows  # noqa: E402


def _rate(fn, n_items: int, min_seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def bench_substructure(preset, cls, batch, seconds, device):
    sim = SubstructureSimulator(preset, device=device)
    counter = iter(range(10**9))

    def ours():
        start = next(counter) * batch
        rngs = [pop.object_rngs(0, "substructure", "train", 0, i) for i in range(start, start + batch)]
        params = [pop.sample_substructure(r[0], cls, sim.preset, distances_mpc=sim.distances_mpc) for r in rngs]
        images = sim.render(params)[:, 0].cpu().numpy().astype(np.float64)
        if sim.preset["noise"]["default"]:
            images = [sim.add_noise(im, p, r[1]) for im, p, r in zip(images, params, rngs)]
        return images

    def theirs():
        rng, noise_rng = pop.object_rngs(1, "substructure", "train", 0, next(counter))
        p = pop.sample_substructure(rng, cls, sim.preset, distances_mpc=sim.distances_mpc)
        image = reference.render_substructure(sim, p)
        if not sim.preset["noise"]["default"]:
            return image
        if sim.preset["noise"]["kind"] == "deeplense-poisson":  # DeepLenseSim's own numpy noise recipe
            return reference.deeplense_noise(image, p["exposure_s"], sim.preset["noise"]["background_rms"], noise_rng)
        return sim.add_noise(image, p, noise_rng)

    return _rate(ours, batch, seconds), _rate(theirs, 1, seconds)


def bench_lensfinding(preset, is_lens, batch, seconds, device):
    sim = LensfindingSimulator(preset, device=device)
    counter = iter(range(10**9))

    def ours():
        start = next(counter) * batch
        rngs = [pop.object_rngs(0, "lensfinding", "train", int(is_lens), i) for i in range(start, start + batch)]
        params = [pop.sample_lensfinding(r[0], is_lens, sim.preset) for r in rngs]
        return lensfinding_rows(sim, params, sim.render(params), [r[1] for r in rngs])

    def theirs():  # the lenstronomy-expressible part (SIE+shear, Sersic source, clumps; Sersic light), 3 bands
        rng, noise_rng = pop.object_rngs(1, "lensfinding", "train", int(is_lens), next(counter))
        p = pop.sample_lensfinding(rng, is_lens, sim.preset)
        model = np.stack([reference.render_lens(sim, p, band) for band in range(3)])
        return sim.add_noise(model, noise_rng)

    return _rate(ours, batch, seconds), _rate(theirs, 1, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
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
    for preset, cls in cases:
        if preset == "lsst-gri":
            ours, theirs = bench_lensfinding(preset, cls == "lens", 32, seconds, args.device)
        else:
            batch = 8 if preset == "deeplense-model-i" else 32
            ours, theirs = bench_substructure(preset, cls, batch, seconds, args.device)
        rows.append({"preset": preset, "class": cls, "lensfinder_img_s": ours, "lenstronomy_img_s": theirs,
                     "ratio": ours / theirs})
        print(f"{preset:22s} {cls:7s} lensfinder {ours:9.1f} img/s  lenstronomy {theirs:7.1f} img/s  "
              f"ratio {ours / theirs:6.1f}x", flush=True)
    path = write_result("simulate", {"quick": args.quick, "threads": args.threads, "device": args.device,
                                     "seconds_per_case": seconds, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
