"""Write simulated data sets to disk: deterministic (per-object seeds), atomic (temp file +
os.replace) and resumable (a journal of finished objects, merged into manifest.csv at the end)."""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import yaml

from ..data.layouts import atomic_write, remove_stale_temporaries, write_text_atomic
from ..validation import InputError
from . import population as pop
from .engine import LensfindingSimulator, SubstructureSimulator
from .presets import load_preset

SUBSTRUCTURE_SPLITS = ("train", "val", "test")
LENSFINDING_FOLDERS = {"train_lenses": ("train", "lens"), "train_nonlenses": ("train", "nonlens"),
                       "test_lenses": ("test", "lens"), "test_nonlenses": ("test", "nonlens")}
PUBLISHED_LENSFINDING_COUNTS = {"train_lenses": 1730, "train_nonlenses": 28675,
                                "test_lenses": 195, "test_nonlenses": 19455}
JOURNAL = ".manifest.jsonl"
# CPU renders in chunks of about this many pixels so that temporaries stay in cache
_CPU_CHUNK_PIXELS = 160 * 160 * 8

SUBSTRUCTURE_COLUMNS = [
    "id", "path", "split", "label", "index", "seed", "preset", "distances", "noise", "theta_e_arcsec",
    "source_x_arcsec", "source_y_arcsec", "n_subhalos", "subhalo_mass_total_msun", "subhalo_mass_min_msun",
    "subhalo_mass_median_msun", "subhalo_mass_max_msun", "axion_mass_ev", "vortex_half_length_arcsec",
    "vortex_angle_rad", "exposure_s"]
LENSFINDING_COLUMNS = [
    "id", "path", "split", "label", "folder", "index", "seed", "preset", "theta_e_arcsec", "source_mag_i",
    "magnification", "arc_snr", "deflector_mag_i", "deflector_type", "confuser_kind", "n_neighbours", "n_stars",
    "shear_gamma1", "shear_gamma2", "shear_gamma", "deflector_q", "deflector_r_eff_arcsec", "mass_q",
    "deflector_x_arcsec", "deflector_y_arcsec", "source_x_arcsec", "source_y_arcsec", "source_offset_theta_e",
    "source_r_eff_arcsec", "n_clumps", "source_kind", "n_images", "seeing_scale", "depth_mag", "sky_mag",
    "artefact_kinds"]


# ----------------------------------------------------------------------------- validation
def _check_counts(counts, allowed) -> dict[str, int]:
    if not isinstance(counts, dict) or not counts:
        raise InputError(f"counts: expected a dict with keys among {list(allowed)}, found {counts!r}")
    out = {}
    for key, value in counts.items():
        if key not in allowed:
            raise InputError(f"counts: unknown key {key!r}; expected keys among {list(allowed)}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"counts[{key!r}]: expected a non-negative integer, found {value!r}")
        out[key] = int(value)
    return out


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected a positive integer, found {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- file helpers
def save_npy_atomic(path: Path, array, *, allow_pickle: bool = False) -> None:
    """np.save through atomic_write: a file exists only if complete."""
    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)


def _versions() -> dict:
    import caustics
    import torch

    import lensfinder
    return {"lensfinder": getattr(lensfinder, "__version__", "unknown"), "torch": str(torch.__version__),
            "caustics": str(getattr(caustics, "__version__", "unknown")), "numpy": str(np.__version__)}


def _clean(value):
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class _Journal:
    """Finished objects: rows of an existing manifest.csv plus the append-only journal."""

    def __init__(self, out_dir: Path, columns: list[str]):
        self.out_dir, self.columns = out_dir, columns
        self.path = out_dir / JOURNAL
        self.rows: dict[str, dict] = {}
        manifest = out_dir / "manifest.csv"
        if manifest.exists():
            with open(manifest, newline="") as f:
                for row in csv.DictReader(f):
                    self.rows[row["id"]] = row
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from an interrupted run
                    continue
                self.rows[row["id"]] = row

    def done(self, obj_id: str, rel_path: str) -> bool:
        return obj_id in self.rows and (self.out_dir / rel_path).exists()

    def append(self, rows: list[dict]) -> None:
        rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        for r in rows:
            self.rows[r["id"]] = r

    def finish(self, wanted_ids: list[str]) -> None:
        """Write manifest.csv (wanted objects, in order) atomically and drop the journal."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for obj_id in wanted_ids:
            row = {k: ("" if v is None else v) for k, v in self.rows[obj_id].items()}
            writer.writerow(row)
        write_text_atomic(self.out_dir / "manifest.csv", buf.getvalue())
        self.path.unlink(missing_ok=True)


def _check_run_config(out_dir: Path, config: dict) -> None:
    """Refuse to mix a different simulation into an existing folder."""
    path = out_dir / "simulation.yaml"
    if not path.exists():
        return
    old = yaml.safe_load(path.read_text()) or {}
    for key, value in config.items():
        if key in old and old[key] != value:
            raise InputError(f"{out_dir}: holds a simulation with {key}={old[key]!r}, asked for {value!r}; "
                             "use another --out folder or the same settings to resume")


def _progress(enabled: bool, total: int, description: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.0f} img/s" if task.speed else "- img/s")

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                        TimeRemainingColumn(), disable=not enabled)
    return progress, description, total


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _render_chunks(render_batch, batch: list[dict], chunk: int) -> list[dict]:
    rows = []
    for sub in _chunks(batch, chunk):
        rows += render_batch(sub)
    return rows


_worker_renderer = None  # this worker process's render callable: sent once, so its simulator is built once


def _worker_init(render_batch) -> None:
    global _worker_renderer
    import torch
    torch.set_num_threads(1)  # the processes share the cores; one thread each avoids oversubscription
    _worker_renderer = render_batch


def _render_chunks_in_worker(batch: list[dict], chunk: int) -> list[dict]:
    return _render_chunks(_worker_renderer, batch, chunk)


def _rendered(render_batch, batches, chunk: int, workers: int):
    """Rows of each batch (an iterable of lists), as batches finish: in this process, or spread over
    `workers` processes (spawned, not forked: a forked torch can deadlock), each given render_batch
    once. Every object has its own seeds, so which process renders it changes nothing in its file."""
    if workers == 1:
        for batch in batches:
            yield _render_chunks(render_batch, batch, chunk)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(render_batch,)) as pool:
        pending: set = set()
        for batch in batches:
            pending.add(pool.submit(_render_chunks_in_worker, batch, chunk))
            if len(pending) >= 2 * workers:  # bounded queue: memory stays flat, the journal keeps up
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        for future in pending:
            yield future.result()


def _run(out_dir: Path, jobs: list[dict], *, columns, config, batch_size, chunk, progress, render_batch,
         description, workers: int = 1) -> Path:
    """Shared driver: jobs are dicts with id, rel (path), group (objects of one group batch together)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_config(out_dir, {k: config[k] for k in ("task", "preset", "seed", "options")})
    remove_stale_temporaries(out_dir)  # a killed run's half-written files
    journal = _Journal(out_dir, columns)
    todo = [j for j in jobs if not journal.done(j["id"], j["rel"])]
    for folder in {str(Path(j["rel"]).parent) for j in jobs}:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    groups: dict = {}
    for j in todo:
        groups.setdefault(j["group"], []).append(j)
    batches = [batch for group_jobs in groups.values() for batch in _chunks(group_jobs, batch_size)]
    bar, desc, total = _progress(progress, len(todo), description)
    with bar:
        task = bar.add_task(desc, total=total)
        for rows in _rendered(render_batch, batches, chunk, min(workers, max(1, len(batches)))):
            journal.append(rows)
            bar.advance(task, len(rows))
    journal.finish([j["id"] for j in jobs])
    write_text_atomic(out_dir / "simulation.yaml", yaml.safe_dump(
        dict(config, versions=_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S")), sort_keys=False))
    return out_dir


class _Renderer:
    """Renders and writes one batch of objects and returns their manifest rows. Picklable, so that
    worker processes can run it: each process builds its own simulator on first use (the simulator
    itself is not pickled)."""

    def __init__(self, **settings):
        self.__dict__.update(settings)
        self._sim = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sim": None}

    @property
    def sim(self):
        if self._sim is None:
            self._sim = self._build()
        return self._sim


# ----------------------------------------------------------------------------- task 1
SUBSTRUCTURE_OUTPUT_DTYPES = ("float32", "float64")
SUBSTRUCTURE_OUTPUT_SCALINGS = ("none", "minmax")


def substructure_output(image: np.ndarray, cfg: dict) -> np.ndarray:
    """A rendered float64 image as the preset writes it: `output_scaling` minmax maps each image to [0, 1]
    ((x - min) / (max - min), in float64), then `output_dtype` (default float32, the published Models' dtype)."""
    scaling, dtype = cfg.get("output_scaling", "none"), cfg.get("output_dtype", "float32")
    if scaling not in SUBSTRUCTURE_OUTPUT_SCALINGS or dtype not in SUBSTRUCTURE_OUTPUT_DTYPES:
        raise InputError(f"preset {cfg.get('name')!r}: output_scaling must be one of {SUBSTRUCTURE_OUTPUT_SCALINGS} "
                         f"and output_dtype one of {SUBSTRUCTURE_OUTPUT_DTYPES}, found {scaling!r} and {dtype!r}")
    if scaling == "minmax":
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return image.astype(dtype)


class _SubstructureRenderer(_Renderer):
    def _build(self) -> SubstructureSimulator:
        return SubstructureSimulator(self.cfg, distances=self.distances, device=self.device)

    def __call__(self, batch: list[dict]) -> list[dict]:
        sim, seed, out_dir = self.sim, self.seed, self.out_dir
        rngs = [pop.object_rngs(seed, "substructure", j["split"], j["ci"], j["index"]) for j in batch]
        params = [pop.sample_substructure(r[0], j["cls"], self.cfg, distances_mpc=sim.distances_mpc)
                  for r, j in zip(rngs, batch)]
        images = sim.render(params)[:, 0].cpu().numpy()
        scale = self.cfg["output_scale"] if not self.noise else 1.0
        rows = []
        for j, p, (_, noise_rng), img in zip(batch, params, rngs, images):
            img = img.astype(np.float64)
            img = sim.add_noise(img, p, noise_rng) if self.noise else img * scale
            img = substructure_output(img, self.cfg)
            if self.axion_pickle and j["cls"] == "vort":
                obj = np.empty(2, dtype=object)
                obj[0], obj[1] = img, float(p["axion_mass_ev"])
                save_npy_atomic(out_dir / j["rel"], obj, allow_pickle=True)
            else:
                save_npy_atomic(out_dir / j["rel"], img[None])
            row = {"id": j["id"], "path": j["rel"], "split": j["split"], "label": j["cls"], "index": j["index"],
                   "seed": seed, "preset": self.preset, "distances": sim.distances, "noise": self.noise,
                   "theta_e_arcsec": sim.theta_e_arcsec}
            row.update({c: p[c] for c in SUBSTRUCTURE_COLUMNS if c in p})
            rows.append(row)
        return rows


def simulate_substructure(out_dir, *, preset: str, counts: dict[str, int], seed: int = 0, batch_size: int = 256,
                          device: str = "cpu", distances: str | None = None, noise: bool | None = None,
                          progress: bool = True, axion_pickle: bool = False, workers: int = 1) -> Path:
    """Simulate a Task-1 set: ``out_dir/<split>/<class>/<id>.npy`` (1, H, W) in the preset's output_dtype
    (default float32) and output_scaling (default none; minmax: each image in [0, 1]), with
    ``counts`` images per class for each split (train / val / test), plus manifest.csv and
    simulation.yaml. ``axion_pickle`` writes vort files as the published pickled ``[image, m_a]``.
    ``workers`` > 1 renders batches in that many processes (CPU); the files are the same."""
    cfg = load_preset(preset, task="substructure")
    counts = _check_counts(counts, SUBSTRUCTURE_SPLITS)
    batch_size = _check_positive("batch_size", batch_size)
    workers = _check_positive("workers", workers)
    if distances not in (None, "luminosity", "angular"):
        raise InputError(f"distances: expected 'luminosity' or 'angular', found {distances!r}")
    use_noise = cfg["noise"]["default"] if noise is None else bool(noise)
    substructure_output(np.zeros((2, 2)), cfg)  # refuses an unknown output_dtype / output_scaling up front
    out_dir = Path(out_dir)
    render = _SubstructureRenderer(cfg=cfg, preset=preset, seed=seed, device=device, distances=distances,
                                   noise=use_noise, axion_pickle=axion_pickle, out_dir=out_dir)
    sim = render.sim
    jobs = []
    for split, n in counts.items():
        for ci, cls in enumerate(pop.SUBSTRUCTURE_CLASSES):
            for i in range(n):
                obj_id = f"{split}_{cls}_{i:06d}"
                jobs.append({"id": obj_id, "rel": f"{split}/{cls}/{obj_id}.npy", "split": split, "cls": cls,
                             "ci": ci, "index": i, "group": (split, cls)})
    chunk = batch_size if sim.device.type != "cpu" else max(1, _CPU_CHUNK_PIXELS // sim.num_pix**2)
    config = {"task": "substructure", "preset": preset, "seed": seed,
              "options": {"distances": sim.distances, "noise": use_noise, "axion_pickle": axion_pickle},
              "counts_per_class": counts, "classes": list(pop.SUBSTRUCTURE_CLASSES)}
    return _run(out_dir, jobs, columns=SUBSTRUCTURE_COLUMNS, config=config, batch_size=batch_size, chunk=chunk,
                progress=progress, render_batch=render, description=f"simulate {preset}",
                workers=workers if sim.device.type == "cpu" else 1)


# ----------------------------------------------------------------------------- task 2
class _LensfindingRenderer(_Renderer):
    def _build(self) -> LensfindingSimulator:
        return LensfindingSimulator(self.cfg, device=self.device)

    def __call__(self, batch: list[dict]) -> list[dict]:
        sim = self.sim
        rngs = [pop.object_rngs(self.seed, "lensfinding", j["split"], pop.LENSFINDING_CLASSES.index(j["label"]),
                                j["index"]) for j in batch]
        params = [pop.sample_lensfinding(r[0], j["label"] == "lens", sim.preset) for r, j in zip(rngs, batch)]
        images, rows = lensfinding_rows(sim, params, sim.render(params), [r[1] for r in rngs])
        for j, img in zip(batch, images):
            save_npy_atomic(self.out_dir / j["rel"], img)
        return [dict(row, path=j["rel"], split=j["split"], folder=j["folder"], index=j["index"], seed=self.seed,
                     preset=self.preset, id=j["id"]) for j, row in zip(batch, rows)]


def simulate_lensfinding(out_dir, *, preset: str = "lsst-gri", counts: dict[str, int] | None = None, seed: int = 0,
                         batch_size: int = 256, device: str = "cpu", progress: bool = True, workers: int = 1,
                         confusers: list[str] | None = None) -> Path:
    """Simulate a Task-2 set: ``out_dir/{train,test}_{lenses,nonlenses}/<id>.npy`` float32 (3, 64, 64)
    in nanomaggies (g, r, i), plus manifest.csv and simulation.yaml. ``counts=None`` gives the
    published counts (1730 / 28675 / 195 / 19455). ``workers`` as for `simulate_substructure`.
    ``confusers`` chooses the confuser families (`population.select_confusers`; None: all of them)."""
    cfg = pop.select_confusers(load_preset(preset, task="lensfinding"), confusers)
    counts = _check_counts(dict(PUBLISHED_LENSFINDING_COUNTS) if counts is None else counts, LENSFINDING_FOLDERS)
    batch_size = _check_positive("batch_size", batch_size)
    workers = _check_positive("workers", workers)
    out_dir = Path(out_dir)
    render = _LensfindingRenderer(cfg=cfg, preset=preset, seed=seed, device=device, out_dir=out_dir)
    sim = render.sim
    jobs = []
    for folder, n in counts.items():
        split, label = LENSFINDING_FOLDERS[folder]
        for i in range(n):
            obj_id = f"{folder}_{i:06d}"
            jobs.append({"id": obj_id, "rel": f"{folder}/{obj_id}.npy", "split": split, "label": label,
                         "folder": folder, "index": i, "group": folder})
    chunk = batch_size if sim.device.type != "cpu" else 32
    config = {"task": "lensfinding", "preset": preset, "seed": seed,
              "options": {"confusers": pop.confuser_families(cfg)},
              "counts": counts, "bands": list(sim.band_names), "units": "nanomaggies (AB zero point 22.5)"}
    return _run(out_dir, jobs, columns=LENSFINDING_COLUMNS, config=config, batch_size=batch_size, chunk=chunk,
                progress=progress, render_batch=render, description=f"simulate {preset}",
                workers=workers if sim.device.type == "cpu" else 1)


def lensfinding_rows(sim: LensfindingSimulator, params: list[dict], out: dict, noise_rngs) -> tuple[list, list]:
    """Noisy images (C, H, W) float32 and manifest rows for a rendered lens-finding batch. Noise
    values come from each object's own generator; the arithmetic is element-wise over the batch
    (exact IEEE operations, so the same bytes whatever the batch size)."""
    is_lens = np.array([p["theta_e_arcsec"] > 0 for p in params], dtype=bool)
    images, snr = sim.noisy_batch(out["model"], out["source"], is_lens, noise_rngs, params)
    flux_i = out["source_flux"][:, -1].cpu().numpy().astype(np.float64)
    rows = []
    for k, p in enumerate(params):
        row = {key: v for key, v in p.items() if not isinstance(v, list)}
        lens = bool(is_lens[k])
        row.update(label="lens" if lens else "nonlens",
                   magnification=flux_i[k] / p["source_flux_i_nmgy"] if lens else np.nan,
                   arc_snr=float(snr[k]) if lens else 0.0,
                   shear_gamma=float(np.hypot(p["shear_gamma1"], p["shear_gamma2"])))
        rows.append(row)
    return list(images), rows
