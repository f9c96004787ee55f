"""``lensfinder simulate ...``: parses arguments and calls the simulate functions."""

from __future__ import annotations

import os
from pathlib import Path

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
    preset: str = typer.Option("lsst-gri", help="lsst-gri | des-gri"),
    out: Path = typer.Option(..., help="output folder"),
    seed: int = typer.Option(0),
    train_lenses: int = typer.Option(PUBLISHED_LENSFINDING_COUNTS["train_lenses"]),
    train_nonlenses: int = typer.Option(PUBLISHED_LENSFINDING_COUNTS["train_nonlenses"]),
    test_lenses: int = typer.Option(PUBLISHED_LENSFINDING_COUNTS["test_lenses"]),
    test_nonlenses: int = typer.Option(PUBLISHED_LENSFINDING_COUNTS["test_nonlenses"]),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("cpu"),
    workers: int = typer.Option(None, help=WORKERS_HELP, show_default="cores available"),
    confusers: str = typer.Option("all", help="confuser families and artefact kinds to draw, comma-separated (all; "
                                  "-NAME leaves one out, e.g. all,-shells,-cosmic_ray); listed in presets/_lensfinding.yaml"),
) -> None:
    """Task 2: 3-band (g, r, i) lens / non-lens cutouts in nanomaggies; defaults: published counts."""
    counts = {"train_lenses": train_lenses, "train_nonlenses": train_nonlenses, "test_lenses": test_lenses,
              "test_nonlenses": test_nonlenses}
    _call(simulate_lensfinding, out_dir=out, preset=preset, counts=counts, seed=seed, batch_size=batch_size,
          device=device, workers=_cores() if workers is None else workers, confusers=confusers.split(","))
