"""``lensfinder simulate ...``: parses arguments and calls the simulate functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .writer import PUBLISHED_LENSFINDING_COUNTS, simulate_lensfinding, simulate_substructure

WORKERS_HELP = "CPU processes rendering in parallel (default: the cores this process may use); the files do not depend on it"


def _cores() -> int:
    """The CPU cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
app = typer.Typer(help="Simulate data sets in the published on-disk formats.", no_args_is_help=True)


def _call(fn, **kwargs) -> None:
    try:
        path = fn(**kwargs)
    except ValueError as err:  # bad preset, counts, folder: one clear line, no traceback
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def substructure(
    preset: str = typer.Option("deeplense-model-iii", help="deeplense-model-i | -ii | -iii"),
    out: Path = typer.Option(..., help="output folder"),
    train: int = typer.Option(1000, help="training images per class"),
    val: int = typer.Option(250, help="validation images per class"),
    test: int = typer.Option(250, help="test images per class"),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("cpu"),
    distances: str = typer.Option(None, help="luminosity (published) or angular (physical); default: preset's"),
    noise: bool = typer.Option(None, "--noise/--no-noise", help="default: the preset's (published) choice"),
    axion_pickle: bool = typer.Option(False, help="write vort files as the published pickled [image, m_a]"),
    workers: int = typer.Option(None, help=WORKERS_HELP, show_default="cores available"),
) -> None:
    """Task 1: DeepLense substructure classes no / sphere / vort."""
    _call(simulate_substructure, out_dir=out, preset=preset, counts={"train": train, "val": val, "test": test},
          seed=seed, batch_size=batch_size, device=device, distances=distances, noise=noise,
          axion_pickle=axion_pickle, workers=_cores() if workers is None else workers)


@app.command()
def lensfinding(
    preset: Optional[str] = typer.Option(None, help="lsst-gri | des-gri | lsst-gri-poor (default lsst-gri); with --hosts: "
                                         "the survey the hosts come from (its pixel scale, nanomaggies)",
                                         show_default="lsst-gri"),
    out: Path = typer.Option(..., help="output folder"),
    seed: int = typer.Option(0),
    train_lenses: Optional[int] = typer.Option(None, show_default=f"{PUBLISHED_LENSFINDING_COUNTS['train_lenses']}; "
                                               "with --hosts: half of 80 % of the hosts"),
    train_nonlenses: Optional[int] = typer.Option(None, show_default=f"{PUBLISHED_LENSFINDING_COUNTS['train_nonlenses']}; "
                                                  "with --hosts: the other half"),
    test_lenses: Optional[int] = typer.Option(None, show_default=f"{PUBLISHED_LENSFINDING_COUNTS['test_lenses']}; "
                                              "with --hosts: half of 20 % of the hosts"),
    test_nonlenses: Optional[int] = typer.Option(None, show_default=f"{PUBLISHED_LENSFINDING_COUNTS['test_nonlenses']}; "
                                                 "with --hosts: the other half"),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("cpu"),
    workers: int = typer.Option(None, help=WORKERS_HELP, show_default="cores available"),
    confusers: str = typer.Option("all", help="confuser families and artefact kinds to draw, comma-separated (all; "
                                  "-NAME leaves one out, e.g. all,-shells,-cosmic_ray); listed in presets/_lensfinding.yaml"),
    hosts: Optional[Path] = typer.Option(None, help="paint lenses onto your own cutouts: a folder of .npy / FITS files "
                                         "((C, H, W), or NAME_<band>.fits per band) or a .h5 / .zarr cube; each host "
                                         "is used once, as a lens or a non-lens"),
    bands: str = typer.Option("g,r,i", help="with --hosts: the hosts' bands in channel order (among g, r, i)"),
    psf: Optional[str] = typer.Option(None, help="with --hosts: folder of PSF images NAME_<band>.fits (from "
                                      "`lensfinder psf`), or the files in band order, comma-separated"),
    psf_fwhm: Optional[str] = typer.Option(None, help="with --hosts: Gaussian PSF instead, FWHM in arcsec: one, or one "
                                           "per band (e.g. 1.0,0.9,0.85)"),
    zero_point: Optional[str] = typer.Option(None, help="with --hosts: AB magnitude of a pixel value of 1 (one, or one "
                                             "per band); default: the preset's units (nanomaggies, 22.5)"),
    pixel_scale: Optional[float] = typer.Option(None, help="with --hosts: arcsec per pixel; default: the preset's"),
    catalogue: Optional[Path] = typer.Option(None, help="with --hosts: CSV / Parquet table of Einstein radii, keyed by "
                                             "host id or file name (column id, object_id, file, path or filename)"),
    theta_e_column: Optional[str] = typer.Option(None, help="with --catalogue: its column of Einstein radii (arcsec); "
                                                 "hosts without a value draw theta_E from their brightness and colour"),
) -> None:
    """Task 2: 3-band (g, r, i) lens / non-lens cutouts in nanomaggies; defaults: published counts. With --hosts,
    simulated lensed sources painted onto your own cutouts instead (same layout; manifest with host, theta_E,
    source magnitude and arc S/N against each host's own sky noise)."""
    given = {"train_lenses": train_lenses, "train_nonlenses": train_nonlenses, "test_lenses": test_lenses,
             "test_nonlenses": test_nonlenses}
    workers = _cores() if workers is None else workers
    if hosts is not None:
        from ..hosts.paint import paint_hosts

        counts = None if all(v is None for v in given.values()) else {k: v or 0 for k, v in given.items()}
        _call(paint_hosts, out_dir=out, hosts=hosts, bands=[b.strip() for b in bands.split(",") if b.strip()],
              preset=preset, pixel_scale_arcsec=pixel_scale, zero_point=zero_point, psf=psf, psf_fwhm_arcsec=psf_fwhm,
              catalogue=catalogue, theta_e_column=theta_e_column, counts=counts, seed=seed,
              batch_size=batch_size, workers=workers)
        return
    counts = {k: PUBLISHED_LENSFINDING_COUNTS[k] if v is None else v for k, v in given.items()}
    _call(simulate_lensfinding, out_dir=out, preset=preset or "lsst-gri", counts=counts, seed=seed,
          batch_size=batch_size, device=device, workers=workers, confusers=confusers.split(","))
