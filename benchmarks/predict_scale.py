"""Survey prediction at scale on CPU: cutouts per second end to end (the `lensfinder predict` function: model load,
reading the cube or cutting the tiles, normalisation, the network, the Parquet parts, the merge into the ranked
catalogue), peak memory (RSS of the whole process tree, sampled), and the network's own speed on the same machine
and threads, for an HDF5 cube and for FITS tiles + a catalogue, at several sizes and 1 or 2 processes (DDP on CPU,
Lightning's own launcher, one thread each) and DataLoader workers. Lens finding with the shipped weights (resnet-s,
3 x 64 x 64); one view (--tta none) by default, the first pass of the two-pass default (whose second pass re-scores
1 %: add --tta top to measure it whole).

    python benchmarks/predict_scale.py                                   # sizes 20000,200000; processes 1,2
    python benchmarks/predict_scale.py --sizes 4096 --processes 1 --sources cube --name predict_scale_small

Each run is a child process (`--child`) that imports first and then times `predict_survey` alone; the interpreter
start and imports are reported apart ("startup_s"). Synthetic cutouts (sky noise plus a galaxy): the speed does not
depend on the values. Prints one table and writes benchmarks/results/<name>.json with the machine and the load
average (on a shared machine the numbers are floors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZE, SCALE = 64, 0.2  # the shipped lens finder's cutouts: 64 x 64 pixels of 0.2 arcsec (lsst-gri)
TILE = 4096  # tile side in pixels (tiles + catalogue): 13.7 arcmin


def synthetic(n: int, rng: np.random.Generator) -> np.ndarray:
    """n cutouts (3, 64, 64) of sky noise (nanomaggies) with a galaxy of random brightness in the middle."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    galaxy = np.exp(-np.hypot(xx, yy) / 3.0).astype(np.float32)
    images = rng.normal(0.0, 0.01, (n, 3, SIZE, SIZE)).astype(np.float32)
    images += rng.uniform(0.05, 2.0, (n, 3, 1, 1)).astype(np.float32) * galaxy
    return images


def write_cube(path: Path, n: int, *, seed: int = 0) -> Path:
    import h5py

    rng = np.random.default_rng(seed)
    block = synthetic(4096, rng)
    with h5py.File(path, "w") as handle:
        images = handle.create_dataset("images", shape=(n, 3, SIZE, SIZE), dtype="float32", chunks=(256, 3, SIZE, SIZE))
        for start in range(0, n, len(block)):  # a repeated block: writing 10^5+ cutouts of random numbers is slow
            stop = min(start + len(block), n)
            images[start:stop] = block[: stop - start]
        handle["id"] = np.array([f"obj{i:09d}" for i in range(n)], dtype=h5py.string_dtype())
        handle["ra"], handle["dec"] = rng.uniform(0, 360, n), rng.uniform(-60, 10, n)
        handle.attrs["pixel_scale_arcsec"] = SCALE
    return path


def write_tiles(folder: Path, n: int, *, n_tiles: int = 4, seed: int = 0) -> tuple[list[Path], Path]:
    """`n_tiles` per-band FITS tiles (g, r, i) side by side in RA, and a Parquet catalogue of n positions on them
    (away from the edges), in random order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    files, ras, decs = [], [], []
    for t in range(n_tiles):
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0 + t * TILE * SCALE / 3600 / np.cos(np.radians(2.0)), 2.0]
        wcs.wcs.crpix = [(TILE + 1) / 2, (TILE + 1) / 2]
        wcs.wcs.cd = np.array([[-SCALE / 3600, 0.0], [0.0, SCALE / 3600]])
        header = wcs.to_header()
        for band in "gri":
            plane = rng.normal(0.0, 0.01, (TILE, TILE)).astype(np.float32)
            path = folder / f"tile{t}_{band}.fits"
            fits.PrimaryHDU(plane, header=header).writeto(path)
            files.append(path)
        k = n // n_tiles + (t < n % n_tiles)
        x, y = rng.uniform(SIZE, TILE - SIZE, k), rng.uniform(SIZE, TILE - SIZE, k)
        ra, dec = wcs.pixel_to_world_values(x, y)
        ras.append(ra)
        decs.append(dec)
    order = rng.permutation(n)
    catalogue = folder / "catalogue.parquet"
    pq.write_table(pa.table({"id": [f"obj{i:09d}" for i in range(n)], "ra": np.concatenate(ras)[order],
                             "dec": np.concatenate(decs)[order]}), catalogue, row_group_size=65536)
    return files, catalogue


def _status_kb(pid: int) -> dict[str, int]:
    """RssAnon and RssFile (kB) of a process, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


class RssSampler:
    """Peak resident memory of a process and all its descendants, summed, sampled every `interval` seconds: all of
    it (RSS) and the anonymous part alone (heap: what grows with the data held; RSS adds the mapped files, e.g. the
    tiles' memory maps and the libraries, which the kernel can drop)."""

    def __init__(self, pid: int, interval: float = 0.25):
        import psutil

        self.root, self.interval, self.peak, self.peak_anon = psutil.Process(pid), interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total = anon = 0
            for proc in procs:
                try:
                    kb = _status_kb(proc.pid)
                except OSError:
                    continue
                anon += kb.get("RssAnon", 0)
                total += sum(kb.values())
            self.peak, self.peak_anon = max(self.peak, total * 1024), max(self.peak_anon, anon * 1024)
            time.sleep(self.interval)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak, self.peak_anon


def child(args) -> None:
    """One timed run (rank 0 writes the result; Lightning re-runs this command for the DDP ranks it starts)."""
    started = float(args.started)
    import pandas  # noqa: F401  (pyarrow imports it at its first array: an import, counted in startup_s)

    from lensfinder.shipped import shipped_weights
    from lensfinder.survey.engine import predict_survey

    imported = time.time()
    inputs = [Path(p) for p in args.inputs.split(",")]
    out = Path(args.out)
    options = dict(run=shipped_weights("lensfinding"), batch_size=args.batch_size, chunk_rows=args.chunk_size,
                   accelerator="cpu", devices=args.processes, strategy="ddp" if args.processes > 1 else "auto",
                   num_workers=args.workers, tta=args.tta)
    if args.catalogue:
        options.update(catalogue=Path(args.catalogue), bands=["g", "r", "i"])
    profile = None
    if args.profile:  # each rank writes its own listing (rank 0 to the path given)
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    start = time.perf_counter()
    result = predict_survey(inputs, out, **options)
    seconds = time.perf_counter() - start
    if profile is not None:
        import pstats

        profile.disable()
        rank = int(os.environ.get("RANK", "0"))
        path = args.profile if rank == 0 else f"{args.profile}.rank{rank}"
        pstats.Stats(profile, stream=open(path, "w")).sort_stats("cumulative").print_stats(60)
    if result.merged is not None:  # rank 0
        import torch

        Path(args.result).write_text(json.dumps({"seconds": seconds, "startup_s": imported - started,
                                                 "rows": result.merged.rows, "threads": torch.get_num_threads()}))


def network_child(args) -> None:
    """The network's own speed: `view_logits` (normalisation + network + calibration, one view) on in-memory batches
    of the same size, threads as given; the median of 5 passes over `--n` cutouts, after one to warm up."""
    import torch

    from lensfinder.evaluate.inference import scoring_module, view_logits
    from lensfinder.shipped import shipped_weights
    from lensfinder.train.run import load_model

    torch.set_num_threads(args.threads)
    module = scoring_module(load_model(shipped_weights("lensfinding")))
    x = torch.from_numpy(synthetic(args.n, np.random.default_rng(1)))
    views = 8 if args.tta == "all" else 1
    passes = []
    for _ in range(6):
        start = time.perf_counter()
        for i in range(0, args.n, args.batch_size):
            view_logits(module, x[i: i + args.batch_size], views=views)
        passes.append(time.perf_counter() - start)
    Path(args.result).write_text(json.dumps({"cutouts_per_s": args.n / float(np.median(passes[1:]))}))


def _run_child(command: list[str], env: dict) -> tuple[tuple[int, int], float]:
    started = time.time()
    process = subprocess.Popen(command + ["--started", repr(started)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    sampler = RssSampler(process.pid)
    _, stderr = process.communicate()
    peak = sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return peak, time.time() - started


def network_speed(processes: int, threads: int, args, scratch: Path) -> float:
    """Cutouts per second of `processes` concurrent network runs of `threads` threads each, summed."""
    commands, results = [], []
    for k in range(processes):
        result = scratch / f"net{k}.json"
        results.append(result)
        commands.append([sys.executable, __file__, "--network-child", "--n", str(args.network_n), "--threads",
                         str(threads), "--batch-size", str(args.batch_size), "--tta", args.tta, "--result", str(result)])
    running = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    for process in running:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(stderr.decode()[-3000:])
    return sum(json.loads(r.read_text())["cutouts_per_s"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="cutouts per run, comma-separated")
    parser.add_argument("--processes", default="1,2", help="DDP processes per run (1: one process), comma-separated")
    parser.add_argument("--workers", default="0", help="DataLoader workers per process, comma-separated")
    parser.add_argument("--sources", default="cube,tiles", help="cube and/or tiles")
    parser.add_argument("--tta", default="none", help="none (one view) | top (two passes) | all")
    parser.add_argument("--launcher", default="torchrun", help="several processes: torchrun (started together, as "
                        "on a cluster) | lightning (Lightning starts the others from the first, at predict: adds their "
                        "start-up)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per part (default: predict's, ~rows / 256)")
    parser.add_argument("--network-n", type=int, default=4096, help="cutouts for the network's own speed")
    parser.add_argument("--profile", action="store_true", help="write a cProfile listing of each run beside the JSON")
    parser.add_argument("--name", default="predict_scale")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the cubes and tiles (default: a "
                                                                   "temporary folder)")
    # the child modes
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--network-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--catalogue", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--started", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, dest="processes_one", help=argparse.SUPPRESS)
    parser.add_argument("--nworkers", type=int, dest="workers_one", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", dest="profile_path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.processes, args.workers, args.profile = args.processes_one, args.workers_one, args.profile_path
        return child(args)
    if args.network_child:
        return network_child(args)

    from _env import write_result

    sizes = [int(s) for s in args.sizes.split(",")]
    processes = [int(p) for p in args.processes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    sources = [s.strip() for s in args.sources.split(",")]
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        network = {p: network_speed(p, max(1, cores // p), args, scratch) for p in processes}
        for p, speed in network.items():
            print(f"network alone: {p} process(es) x {max(1, cores // p)} thread(s): {speed:8.1f} cutouts/s", flush=True)
        seen = {p: [v] for p, v in network.items()}
        print(f"{'source':6s} {'cutouts':>8s} {'procs':>5s} {'workers':>7s} {'seconds':>8s} {'cutouts/s':>10s} "
              f"{'network':>8s} {'ratio':>6s} {'RSS MB':>7s} {'anon MB':>7s} {'startup':>7s} {'load':>5s}", flush=True)
        for n in sizes:
            inputs = {}
            if "cube" in sources:
                inputs["cube"] = ([write_cube(scratch / f"cube{n}.h5", n)], None)
            if "tiles" in sources:
                folder = scratch / f"tiles{n}"
                folder.mkdir()
                inputs["tiles"] = write_tiles(folder, n)
            for source, (files, catalogue) in inputs.items():
                for p in processes:
                    for w in workers:
                        tag = f"{source}-{n}-p{p}-w{w}"
                        result = scratch / f"{tag}.json"
                        launch = [sys.executable, __file__] if p == 1 or args.launcher == "lightning" else [
                            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(p),
                            __file__]
                        command = [*launch, "--child", "--inputs", ",".join(map(str, files)),
                                   "--out", str(scratch / f"{tag}.parquet"), "--result", str(result), "--proc", str(p),
                                   "--nworkers", str(w), "--batch-size", str(args.batch_size), "--tta", args.tta]
                        if args.chunk_size is not None:
                            command += ["--chunk-size", str(args.chunk_size)]
                        if catalogue is not None:
                            command += ["--catalogue", str(catalogue)]
                        if args.profile:
                            command += ["--profile-to", str(HERE / "results" / f"{args.name}.{tag}.prof.txt")]
                        network[p] = network_speed(p, max(1, cores // p), args, scratch)  # just before: the
                        seen[p].append(network[p])  # machine's speed drifts on a shared host
                        load = os.getloadavg()[0]
                        (peak, anon), wall = _run_child(command, {**os.environ})
                        timed = json.loads(result.read_text())
                        assert timed["rows"] == n, timed
                        speed = n / timed["seconds"]
                        row = {"source": source, "cutouts": n, "processes": p, "workers": w,
                               "threads_per_process": timed["threads"], "seconds": round(timed["seconds"], 2),
                               "cutouts_per_s": round(speed, 1), "network_cutouts_per_s": round(network[p], 1),
                               "ratio_to_network": round(speed / network[p], 3), "peak_rss_mb": round(peak / 2**20),
                               "peak_anon_mb": round(anon / 2**20),
                               "launcher": "one process" if p == 1 else args.launcher,
                               "startup_s": round(timed["startup_s"], 2), "wall_s": round(wall, 2),
                               "load_average_1min_before": round(load, 2)}
                        rows.append(row)
                        print(f"{source:6s} {n:8d} {p:5d} {w:7d} {row['seconds']:8.1f} {speed:10.1f} "
                              f"{network[p]:8.1f} {row['ratio_to_network']:6.2f} {row['peak_rss_mb']:7d} "
                              f"{row['peak_anon_mb']:7d} "
                              f"{row['startup_s']:7.1f} {load:5.1f}", flush=True)
                        for path in scratch.glob(f"{tag}.*"):
                            if path.is_dir():
                                import shutil

                                shutil.rmtree(path)
                            else:
                                path.unlink()
            for path in scratch.iterdir():  # the next size's inputs
                if path.is_dir():
                    import shutil

                    shutil.rmtree(path)
                else:
                    path.unlink()
    payload = {"what": "lensfinder predict (predict_survey) end to end on CPU, shipped lens finder (resnet-s, 3x64x64), "
                       f"--tta {args.tta}: model load, reading (HDF5 cube) or cutting (FITS tiles + Parquet catalogue), "
                       "normalisation, network, Parquet parts, merge; seconds exclude the interpreter start and imports "
                       "(startup_s; pandas, which pyarrow imports, counted there); peak RSS (and its anonymous part) "
                       "summed over the process tree; network: view_logits on in-memory batches with the same processes "
                       "and threads, measured just before each row (median of 5 passes); several processes: DDP on CPU "
                       "(gloo) started by the launcher named",
               "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "cores": cores,
               "batch_size": args.batch_size, "chunk_rows": args.chunk_size, "tta": args.tta,
               "network_cutouts_per_s": {str(p): [round(v, 1) for v in values] for p, values in seen.items()},
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "note": args.note,
               "goal": ">= 1,500 cutouts/s end to end on 2 cores, >= 90 % of the network's own speed, memory flat",
               "results": rows}
    print(f"written to {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
