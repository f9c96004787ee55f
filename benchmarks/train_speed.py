"""Training speed on CPU: images per second through forward + backward + optimiser step, for every registered
model, at 64 and 150 px, batch 64, with 1 and 2 torch threads (synthetic single-band input; the speed does not
depend on the pixel values).

    python benchmarks/train_speed.py                     # every model, 64 and 150 px, 1 and 2 threads
    python benchmarks/train_speed.py --models resnet-s,resnet-pool-s --threads 1 --name train_speed_quick

Prints one table and writes benchmarks/results/<name>.json (default "train_speed") with the machine description.
Measured on a shared machine, numbers are a floor: say so when another job ran (--note).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from lensfinder.models import create_model, list_models  # noqa: E402


def images_per_second(name: str, *, size: int, threads: int, batch_size: int = 64, channels: int = 1,
                      warmup: int = 2, min_seconds: float = 4.0) -> float | None:
    """Training images/s of model `name`; None when the model does not take this size (e.g. report CNNs at 150)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:
        model = create_model(name, channels, 3, image_size=size)
    except ValueError:
        return None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, channels, size, size)
    y = torch.randint(0, 3, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < min_seconds:
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--sizes", default="64,150")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--name", default="train_speed")
    parser.add_argument("--note", default="", help="e.g. 'another training job used one core'")
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else list_models()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    print(f"{'model':16s} {'size':>5s} {'threads':>7s} {'images/s':>9s}")
    for name in models:
        for size in sizes:
            for n in threads:
                rate = images_per_second(name, size=size, threads=n, batch_size=args.batch_size)
                rows.append({"model": name, "size": size, "threads": n, "batch_size": args.batch_size,
                             "images_per_s": rate})
                print(f"{name:16s} {size:5d} {n:7d} {'n/a' if rate is None else f'{rate:9.1f}':>9s}", flush=True)
    load = os.getloadavg()  # other jobs on the machine lower every number: recorded with them
    path = write_result(args.name, {"what": "training images/s (forward + backward + AdamW step), batch "
                                            f"{args.batch_size}, 1 x size x size input", "note": args.note,
                                    "load_average_1_5_15min_at_end": load, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
