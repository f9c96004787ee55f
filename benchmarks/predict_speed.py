"""Survey prediction speed on CPU: cutouts per second end to end through `lensfinder predict` on an HDF5 cube
(model load, Lightning Trainer.predict on one process, reading the cube in chunks, writing the Parquet parts, the
merge into the ranked catalogue), with the shipped lens finder at its default (two passes: one view for every
cutout, the 8 D4 views for the best-scored 1 %, at least 1,000), with --tta all (8 views for every cutout) and with
--tta none (one view). Synthetic 3 x 64 x 64 cutouts: the speed does not depend on the pixel values. For sizes,
processes, tiles and memory see benchmarks/predict_scale.py.

    python benchmarks/predict_speed.py                 # N = 2048, batch 512
    python benchmarks/predict_speed.py --n 20000 --name predict_speed_20k

Prints one table and writes benchmarks/results/<name>.json (default "predict_speed") with the machine description
and the load average: measured on a shared machine, the numbers are a floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from lensfinder.evaluate.shipped import shipped_weights  # noqa: E402
from lensfinder.survey.engine import predict_survey  # noqa: E402


def write_cube(path: Path, n: int, *, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        images = handle.create_dataset("images", shape=(n, 3, size, size), dtype="float32", chunks=(256, 3, size, size))
        for start in range(0, n, 1024):
            stop = min(start + 1024, n)
            images[start:stop] = rng.normal(0.0, 1.0, (stop - start, 3, size, size)).astype(np.float32)
        handle["id"] = np.array([f"obj{i:09d}" for i in range(n)], dtype=h5py.string_dtype())
        handle["ra"], handle["dec"] = rng.uniform(0, 360, n), rng.uniform(-60, 10, n)
        handle.attrs["pixel_scale_arcsec"] = 0.2
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="cutouts in the cube")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per part (default: predict's)")
    parser.add_argument("--name", default="predict_speed")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    weights = shipped_weights("lensfinding")
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cube = write_cube(Path(tmp) / "cube.h5", args.n)
        for label, tta in (("default (two passes)", None), ("--tta all", "all"), ("--tta none", "none")):
            out = Path(tmp) / f"{tta or 'default'}.parquet"
            start = time.perf_counter()
            result = predict_survey([cube], out, run=weights, batch_size=args.batch_size, chunk_rows=args.chunk_size,
                                    tta=tta, accelerator="cpu", devices=1)
            seconds = time.perf_counter() - start
            assert result.merged is not None and result.merged.rows == args.n
            rows.append({"mode": label, "tta": result.tta, "cutouts": args.n, "seconds": round(seconds, 2),
                         "cutouts_per_s": round(args.n / seconds, 1)})
            print(f"{label:24s} {args.n:8d} cutouts {seconds:8.1f} s {args.n / seconds:9.1f} cutouts/s", flush=True)
    payload = {"what": "lensfinder predict on an HDF5 cube, end to end (model load, Trainer.predict on 1 CPU process, "
                       "Parquet parts, merge), shipped lens finder (resnet-s, 3x64x64)",
               "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "batch_size": args.batch_size,
               "chunk_rows": args.chunk_size, "torch_threads": torch.get_num_threads(),
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "note": args.note,
               "results": rows}
    try:
        import lightning
        import pyarrow

        payload["versions"] = {"lightning": lightning.__version__, "pyarrow": pyarrow.__version__,
                               "h5py": h5py.__version__}
    except ImportError:
        pass
    print(f"written to {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
