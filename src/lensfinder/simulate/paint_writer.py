"""Write a painted lens-finding set: the user's cutouts as hosts, simulated lensed sources painted onto some of
them (``paint``), in the lens-finding layout every simulated set has (train/test, lenses/nonlenses, manifest.csv,
simulation.yaml), with the simulator's writer driver: per-object seeds (the same seed gives the same bytes),
atomic files, and a journal from which a killed run (SIGKILL included) resumes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..validation import InputError
from . import paint
from . import population as pop
from .writer import LENSFINDING_FOLDERS, _check_counts, _check_positive, _run, save_npy_atomic

PAINT_STREAM = 16  # the painted objects' entry in their seed sequence: streams apart from the simulator's objects
DEFAULT_TEST_FRACTION = 0.2  # without counts: this share of the hosts goes to the test split
DEFAULT_LENS_FRACTION = 0.5  # without counts: this share of each split's hosts is painted
BASE_COLUMNS = [
    "id", "path", "split", "label", "folder", "index", "seed", "preset", "host_id", "host_file", "theta_e_arcsec",
    "theta_e_from", "source_mag_i", "source_kind", "arc_snr", "magnification", "deflector_x_arcsec",
    "deflector_y_arcsec", "mass_q", "mass_phi_rad", "shear_gamma1", "shear_gamma2", "shear_gamma", "source_x_arcsec",
    "source_y_arcsec", "source_offset_theta_e", "source_r_eff_arcsec", "n_clumps", "n_images", "supersampling",
    "host_q", "host_phi_rad"]


def paint_columns(bands: list[str]) -> list[str]:
    """The manifest's columns: the object, its host, the painted lens, and per band the host's aperture magnitude,
    sky level and sky noise (measured on its own pixels)."""
    return BASE_COLUMNS + [f"{what}_{b}" for what in ("host_mag", "sky_median", "sky_sigma") for b in bands]


def default_counts(n_hosts: int, *, test_fraction: float = DEFAULT_TEST_FRACTION,
                   lens_fraction: float = DEFAULT_LENS_FRACTION) -> dict[str, int]:
    """Every host used once: `test_fraction` of them in the test split, `lens_fraction` of each split painted."""
    n_test = int(round(n_hosts * test_fraction))
    n_train = n_hosts - n_test
    train_lenses, test_lenses = int(round(n_train * lens_fraction)), int(round(n_test * lens_fraction))
    return {"train_lenses": train_lenses, "train_nonlenses": n_train - train_lenses, "test_lenses": test_lenses,
            "test_nonlenses": n_test - test_lenses}


def assign_hosts(n_hosts: int, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Host indices per output folder: one seeded permutation of the hosts cut into the folders in
    LENSFINDING_FOLDERS order, so no host is in two folders (a painted host is never also a non-lens, and no host
    is in both train and test; train's validation split is drawn from train's files)."""
    order = np.random.default_rng(np.random.SeedSequence([seed, PAINT_STREAM])).permutation(n_hosts)
    out, start = {}, 0
    for folder in LENSFINDING_FOLDERS:
        n = counts.get(folder, 0)
        out[folder] = order[start:start + n]
        start += n
    return out


class _PaintRenderer:
    """Paints and writes one batch of objects and returns their manifest rows; picklable (worker processes)."""

    def __init__(self, **settings):
        self.__dict__.update(settings)

    def _measure(self, host: np.ndarray) -> dict:
        cfg = self.cfg
        median, sigma = paint.sky_background(host, clip_sigma=cfg["sky_clip_sigma"], max_iters=cfg["sky_clip_iters"])
        x, y = paint.light_peak_arcsec(host, median, sigma, pixel_scale_arcsec=self.pixel_scale_arcsec,
                                       search_radius_arcsec=cfg["peak_search_radius_arcsec"])
        ref = self.bands.index(cfg["shape_band"]) if cfg["shape_band"] in self.bands else len(self.bands) - 1
        q, phi = paint.light_shape(host[ref], median[ref], sigma[ref], x_arcsec=x, y_arcsec=y,
                                   pixel_scale_arcsec=self.pixel_scale_arcsec, radius_arcsec=cfg["aperture_radius_arcsec"])
        mags = paint.aperture_magnitudes(host, median, self.zero_point, x_arcsec=x, y_arcsec=y,
                                         pixel_scale_arcsec=self.pixel_scale_arcsec,
                                         radius_arcsec=cfg["aperture_radius_arcsec"])
        return {"median": median, "sigma": sigma, "x": x, "y": y, "q": q, "phi": phi,
                "mags": dict(zip(self.bands, (float(m) for m in mags)))}

    def __call__(self, batch: list[dict]) -> list[dict]:
        rows = []
        for job in batch:
            i = int(job["host"])
            host = self.hosts.read(i)
            m = self._measure(host)
            row = {"id": job["id"], "path": job["rel"], "split": job["split"], "label": job["label"],
                   "folder": job["folder"], "index": job["index"], "seed": self.seed, "preset": self.preset,
                   "host_id": self.hosts.ids[i], "host_file": self.hosts.files[i], "host_q": m["q"],
                   "host_phi_rad": m["phi"], "theta_e_arcsec": 0.0, "arc_snr": 0.0, "theta_e_from": ""}
            for b, band in enumerate(self.bands):
                row.update({f"host_mag_{band}": m["mags"][band], f"sky_median_{band}": float(m["median"][b]),
                            f"sky_sigma_{band}": float(m["sigma"][b])})
            if job["label"] == "lens":
                rng, _ = pop.object_rngs(self.seed, "lensfinding", job["split"], pop.LENSFINDING_CLASSES.index("lens"),
                                         job["index"], worker=PAINT_STREAM)
                draw = rng.standard_normal()  # drawn whether or not a catalogue gives theta_E: the same streams
                given = self.theta_e.get(self.hosts.ids[i])
                theta_e = given if given is not None else paint.theta_e_from_host(m["mags"], self.cfg["theta_e"], draw)
                params = paint.sample_painted_lens(rng, self.population, x_arcsec=m["x"], y_arcsec=m["y"],
                                                   light_q=m["q"], light_phi_rad=m["phi"], theta_e_arcsec=theta_e)
                supersampling = paint.supersampling_for(params, pixel_scale_arcsec=self.pixel_scale_arcsec,
                                                        least=self.cfg["supersampling"],
                                                        subpixels_per_r_eff=self.cfg["subpixels_per_r_eff"],
                                                        most=self.cfg["max_supersampling"])
                light, extra = paint.painted_light(params, self.psf, num_pix=host.shape[-1],
                                                   pixel_scale_arcsec=self.pixel_scale_arcsec, zero_point=self.zero_point,
                                                   supersampling=supersampling,
                                                   support_floor=self.cfg["support_floor_sky_sigma"] * m["sigma"],
                                                   band_index=self.band_index)
                image = paint.add_to_host(host, light)
                row.update({k: v for k, v in params.items() if not isinstance(v, list)}, **extra, supersampling=supersampling,
                           theta_e_from="catalogue" if given is not None else "host relation",
                           arc_snr=paint.arc_snr(light, m["sigma"]),
                           shear_gamma=float(math.hypot(params["shear_gamma1"], params["shear_gamma2"])))
            else:
                image = np.asarray(host, dtype=np.float32)
            save_npy_atomic(self.out_dir / job["rel"], image)
            rows.append(row)
        return rows


def _per_band(name: str, value, bands: list[str]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.shape == (1,):
        values = np.repeat(values, len(bands))
    if values.shape != (len(bands),) or not np.isfinite(values).all():
        raise InputError(f"{name}: expected one finite value or one per band ({len(bands)}: {','.join(bands)}), "
                         f"found {np.asarray(value).tolist()}")
    return values


def paint_lensfinding(out_dir, *, hosts, population: dict, pixel_scale_arcsec: float, zero_point, psf: np.ndarray,
                      psf_description, preset: str | None = None, counts: dict[str, int] | None = None, seed: int = 0,
                      theta_e: dict[str, float] | None = None, theta_e_description=None, batch_size: int = 64,
                      workers: int = 1, progress: bool = True) -> Path:
    """Paint simulated lenses onto `hosts` (a `hosts.read.HostSet`: ids, files, bands, shape, read(i)) and write the
    lens-finding layout to `out_dir`: ``{train,test}_{lenses,nonlenses}/<id>.npy`` float32 (C, H, W) in the hosts'
    units, manifest.csv (``paint_columns``) and simulation.yaml. Lenses are hosts plus ``paint.painted_light``;
    non-lenses are hosts unchanged; every host is used at most once (``assign_hosts``). `population` is a merged
    lens-finding preset (its sources and its ``paint`` table); `psf` (C, K, K) sums to 1 per band; `zero_point` one
    value or one per band; `theta_e` Einstein radii by host id (a catalogue), the others from the host relation.
    `counts` None: every host, 80 % train, half of each split painted."""
    bands = list(hosts.bands)
    band_index = paint.band_indices(bands)
    zero_point = _per_band("zero point", zero_point, bands)
    if not (isinstance(pixel_scale_arcsec, (int, float)) and pixel_scale_arcsec > 0):
        raise InputError(f"pixel scale: expected a positive number of arcsec, found {pixel_scale_arcsec!r}")
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 3 or len(psf) != len(bands) or psf.shape[1] != psf.shape[2] or psf.shape[1] % 2 == 0:
        raise InputError(f"psf: expected (C, K, K) with C = {len(bands)} bands and K odd, found shape {psf.shape}")
    counts = _check_counts(default_counts(len(hosts)) if counts is None else counts, LENSFINDING_FOLDERS)
    if sum(counts.values()) > len(hosts):
        raise InputError(f"{hosts.source}: {len(hosts)} host(s), but the counts ask for {sum(counts.values())} "
                         f"({', '.join(f'{k} {v}' for k, v in counts.items())}); every host is used once: ask for fewer")
    batch_size = _check_positive("batch_size", batch_size)
    workers = _check_positive("workers", workers)
    out_dir = Path(out_dir)
    assigned = assign_hosts(len(hosts), counts, seed)
    jobs = []
    for folder, members in assigned.items():
        split, label = LENSFINDING_FOLDERS[folder]
        for i, host in enumerate(members):
            obj_id = f"{folder}_{i:06d}"
            jobs.append({"id": obj_id, "rel": f"{folder}/{obj_id}.npy", "split": split, "label": label,
                         "folder": folder, "index": i, "host": int(host), "group": folder})
    cfg = population["paint"]
    render = _PaintRenderer(hosts=hosts, bands=bands, band_index=band_index, cfg=cfg, population=population,
                            pixel_scale_arcsec=float(pixel_scale_arcsec), zero_point=zero_point, psf=psf,
                            theta_e=dict(theta_e or {}), seed=seed, preset=preset, out_dir=out_dir)
    options = {"hosts": hosts.description, "bands": bands, "pixel_scale_arcsec": float(pixel_scale_arcsec),
               "zero_point": zero_point.tolist(), "psf": psf_description, "counts": counts,
               "theta_e_catalogue": theta_e_description}
    config = {"task": "lensfinding", "preset": preset, "seed": seed, "options": options, "painted": True,
              "counts": dict(counts), "bands": list(bands), "units": f"the hosts' (AB zero point {', '.join(f'{z:g}' for z in zero_point)})",
              "paint": cfg}
    return _run(out_dir, jobs, columns=paint_columns(bands), config=config, batch_size=batch_size, chunk=batch_size,
                progress=progress, render_batch=render, description=f"paint {Path(hosts.source).name}", workers=workers)
