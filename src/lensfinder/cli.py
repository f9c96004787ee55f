"""Command line: parses arguments and calls the library functions; user mistakes print one line, no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .validation import InputError

SIMULATE_HELP = "Simulate data sets in the DeepLense layouts."


class _Commands(TyperGroup):
    """The commands, with `simulate` imported only when it runs: the simulator loads torch, caustics and numba
    (seconds), which `--help` and the other commands do not need. When its import fails, running it says why."""

    def list_commands(self, ctx) -> list[str]:
        return ["simulate", *super().list_commands(ctx)]

    def get_command(self, ctx, name: str):
        if name == "simulate":  # listed in --help without importing it
            return TyperGroup(name="simulate", help=SIMULATE_HELP)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args: list[str]):
        if args and args[0] == "simulate":
            return "simulate", _simulate_command(), args[1:]
        return super().resolve_command(ctx, args)


def _simulate_command():
    try:
        from .simulate.cli import app as simulate_app
    except ImportError as err:
        typer.secho(f"error: `lensfinder simulate` is unavailable: importing the simulator failed ({type(err).__name__}: "
                    f"{err}); install the missing package (`pip install -e .` installs them all)", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(1) from None
    return typer.main.get_group(simulate_app)


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lensfinder: substructure classification and lens finding for strong-lensing images.")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"lensfinder {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="print the version and exit")) -> None:
    pass


@app.command()
def train(
    task: str = typer.Option(..., help="substructure | lensfinding"),
    data: Path = typer.Option(..., help="data root in the task's layout"),
    out: Path = typer.Option(..., help="run folder to write"),
    model: Optional[str] = typer.Option(None, help="registry name (see `lensfinder models`); default: the task's best"),
    recipe: Optional[str] = typer.Option(None, help="report | lensfinder; default follows the model"),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings (flags override it)"),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    optimizer: Optional[str] = typer.Option(None, help="adam | adamw"),
    weight_decay: Optional[float] = typer.Option(None),
    scheduler: Optional[str] = typer.Option(None, help="plateau | onecycle | cosine"),
    normalization: Optional[str] = typer.Option(None, help="channel | minmax | asinh | log | none"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="random D4 symmetries"),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="average over the 8 D4 views when predicting"),
    class_weights: Optional[str] = typer.Option(None, help="balanced | none"),
    sampling: Optional[str] = typer.Option(None, help="shuffle | balanced (every class equally often)"),
    seed: Optional[int] = typer.Option(None),
    devices: Optional[str] = typer.Option(None, help="number of devices or 'auto'"),
    num_nodes: Optional[int] = typer.Option(None),
    accelerator: Optional[str] = typer.Option(None, help="cpu | gpu | auto"),
    strategy: Optional[str] = typer.Option(None, help="Lightning strategy, e.g. ddp"),
    precision: Optional[str] = typer.Option(None, help="e.g. 32-true, bf16-mixed"),
    num_workers: Optional[int] = typer.Option(None),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="load pickled object arrays (runs code: trusted files only)"),
    stream: bool = typer.Option(False, "--stream", help="train on an endless simulated stream"),
    stream_preset: Optional[str] = typer.Option(None, help="simulator preset for --stream"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="batches per epoch with --stream"),
    lens_fraction: Optional[float] = typer.Option(None, help="lens finding with --stream: share of lenses drawn (default 0.5)"),
    deterministic: bool = typer.Option(False, "--deterministic", help="deterministic algorithms: same seed, same weights"),
    early_stopping: Optional[int] = typer.Option(None, help="patience in epochs; 0 = off"),
    test_fraction: Optional[float] = typer.Option(None, help="hold out this share of train as the test split (layouts without one)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint; any other "
                                "setting must match the run's, except a larger --epochs (plateau scheduler)"),
    init: Optional[str] = typer.Option(None, help="start from trained weights: 'shipped' or a run folder / .safetensors "
                                       "(learning rate: the recipe's x 0.1 unless --lr)"),
    freeze: Optional[str] = typer.Option(None, help="with --init: none | stem (keep the stem fixed) | body (train the head only)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a model; writes config, checkpoints, history, model.safetensors and figures into --out."""
    from .config import TrainConfig, load_yaml
    from .train.run import train as run_training

    values = load_yaml(config) if config else {}
    flags = dict(model=model, recipe=recipe, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                 scheduler=scheduler, normalization=normalization, augment=augment, tta=tta, class_weights=class_weights,
                 sampling=sampling, seed=seed, devices=devices, num_nodes=num_nodes, accelerator=accelerator, strategy=strategy,
                 precision=precision, num_workers=num_workers, stream_preset=stream_preset, steps_per_epoch=steps_per_epoch,
                 early_stopping=early_stopping, test_fraction=test_fraction, lens_fraction=lens_fraction, init=init,
                 freeze=freeze)
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(task=task, data=str(data), out=str(out), progress=progress)
    values.update({k: True for k, given in (("allow_pickle", allow_pickle), ("stream", stream),
                                              ("deterministic", deterministic)) if given})
    run = run_training(TrainConfig.from_dict(values, source=str(config) if config else "command line"), resume=resume)
    typer.echo(f"run written to {run.path}")


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="run folder written by `lensfinder train`"),
    data: Path = typer.Option(..., help="data root in the task's layout"),
    split: str = typer.Option("test", help="train | val | test"),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="default: as trained"),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("auto"),
):
    """Score a split; writes metrics.json, figures/ and report.html into the run folder."""
    from .evaluate.evaluate import evaluate as run_evaluation

    result = run_evaluation(run, data, split=split, tta=tta, batch_size=batch_size, device=device)
    keys = ("accuracy", "auc", "auc_micro", "auc_weighted", "average_precision", "tpr0", "tpr10", "tpr_at_fpr_1e-3", "ece")
    typer.echo(json.dumps({k: round(result[k], 5) for k in keys if k in result}))
    typer.echo(f"report: {Path(run) / 'report.html'}")


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help=".npy / FITS files or folders of them; or one cutout cube (.h5, "
                                      ".hdf5, .zarr); or per-band FITS tiles NAME_<band>.fits with --catalogue"),
    out: Path = typer.Option(..., help="ranked catalogue to write: .csv for files; .parquet, .csv or .fits for a cube "
                                       "or tiles"),
    run: Optional[Path] = typer.Option(None, help="run folder; or give --task for the shipped weights"),
    task: Optional[str] = typer.Option(None, help="use the weights shipped for this task"),
    batch_size: int = typer.Option(512),
    tta: Optional[str] = typer.Option(None, "--tta", help="which objects get the average over the 8 D4 views: top "
                                      "(one view for all, then the 8 for the best-scored --rescore-top share; the "
                                      "lens finders' default) | all | none; default: as trained (a substructure "
                                      "model trained with averaging: all)"),
    no_tta: bool = typer.Option(False, "--no-tta", help="one view for every object (= --tta none)"),
    rescore_top: float = typer.Option(0.01, help="with --tta top: the share of the best-scored objects re-scored "
                                                 "with the 8 views (0.01 = 1 %; 0: none)"),
    rescore_min: int = typer.Option(1000, help="with --tta top: re-score at least this many objects (all of them when "
                                               "fewer)"),
    device: str = typer.Option("auto"),
    num_workers: int = typer.Option(0, help="DataLoader worker processes reading (and cutting) the cutouts"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    bands: Optional[str] = typer.Option(None, help="one FITS file per band: comma-separated band suffixes, e.g. g,r,i"),
    shard: Optional[str] = typer.Option(None, help="K/N: score only every N-th object from K (one job of N on a cluster)"),
    prevalence: Optional[float] = typer.Option(None, help="lens finding: express probabilities for this lens fraction, e.g. 0.001"),
    preset: Optional[str] = typer.Option(None, help="with --task: the shipped weights trained on this simulator preset "
                                                    "(default: those whose input size and channels match the files)"),
    on_bad: str = typer.Option("skip", help="a cutout that cannot be scored (unreadable, wrong shape, NaN pixels): "
                                            "skip (list it in OUT.skipped.csv) | fail (stop)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    catalogue: Optional[Path] = typer.Option(None, help="tiles: the objects to cut out (id, ra, dec in degrees; "
                                                        ".parquet, .csv or FITS table)"),
    edge: str = typer.Option("pad", help="tiles: an object whose cutout runs off its tile is zero-padded and flagged "
                                         "(pad) or listed as rejected (skip)"),
    pixel_scale: Optional[float] = typer.Option(None, help="tiles/cube: the pixel scale (arcsec) to require, instead "
                                                           "of the model's training preset's"),
    parts: Optional[Path] = typer.Option(None, help="cube/tiles: folder of the Parquet parts (default OUT.parts); a "
                                                    "rerun of the same command resumes from it"),
    chunk_size: Optional[int] = typer.Option(None, help="cube/tiles: rows per Parquet part (the unit of resumption); "
                                                        "default: about rows / 256, from 1,024 to 65,536"),
    top: Optional[int] = typer.Option(None, help="cube/tiles: keep only the K best-scored rows in OUT"),
    accelerator: str = typer.Option("auto", help="cube/tiles: cpu | gpu | auto (Lightning, as in training)"),
    devices: str = typer.Option("auto", help="cube/tiles: number of devices per node, or 'auto'"),
    num_nodes: int = typer.Option(1, help="cube/tiles: number of nodes"),
    strategy: str = typer.Option("auto", help="cube/tiles: Lightning strategy, e.g. ddp"),
    precision: str = typer.Option("32-true", help="cube/tiles: Lightning precision, e.g. bf16-mixed"),
):
    """Score cutouts and write a catalogue ranked by score: the log-odds of lens (or of the predicted class).

    A cube or tiles + --catalogue run on Lightning (1..N processes) and write Parquet parts into OUT.parts, one per
    chunk: run the same command again after a crash and only the missing chunks are scored; the parts are merged
    into OUT at the end (or with `lensfinder merge`). Rows that cannot be scored go to OUT.rejected.<ext>.

    Lens finding scores in two passes by default (--tta top): every object with one view, then the best-scored
    --rescore-top share (1 %) again with the 8 D4 views; the `views` column says which rows got the average."""
    from .evaluate.predict import predict_catalog
    from .evaluate.shipped import shipped_for_inputs
    from .data.cutouts import is_cube

    if no_tta:
        if tta not in (None, "none"):
            raise InputError(f"--no-tta and --tta {tta}: give one of them (--no-tta is --tta none)")
        tta = "none"

    if catalogue is not None or (len(inputs) == 1 and is_cube(inputs[0])):
        from .survey.engine import predict_survey

        result = predict_survey(inputs, out, catalogue=catalogue, bands=[b.strip() for b in bands.split(",")] if bands
                                else None, run=run, task=task, preset=preset, batch_size=batch_size, tta=tta,
                                rescore_top=rescore_top, rescore_min=rescore_min, chunk_rows=chunk_size, parts=parts, accelerator=accelerator, devices=devices,
                                num_nodes=num_nodes, strategy=strategy, precision=precision, num_workers=num_workers,
                                prevalence=prevalence, edge=edge, pixel_scale_arcsec=pixel_scale,
                                shard=_parse_shard(shard) if shard else None, top=top, progress=progress)
        if result.merged is not None:
            again = (f"; the top {result.rescored} re-scored with 8 views ({result.rescore_written} part(s) now)"
                     if result.tta == "top" else "")
            typer.echo(f"{result.written} chunk(s) scored now, {result.done_before} before{again}; catalogue written "
                       f"to {result.merged.path} ({result.merged.rows} row(s))")
            if result.merged.rejected:
                typer.secho(f"{result.merged.rejected} row(s) rejected, listed with the reason in "
                            f"{result.merged.rejected_path}", err=True, fg=typer.colors.YELLOW)
        elif shard is not None:
            finish = ("the same command without --shard (it re-scores the top with 8 views and merges)"
                      if result.tta == "top" else f"`lensfinder merge {result.parts} --out {out}`")
            typer.echo(f"shard {shard}: {result.written} chunk(s) scored now, {result.done_before} before, into "
                       f"{result.parts}; run {finish} once every shard has run")
        return

    if run is None and task is not None:  # the shipped weights that take these files (or were trained on --preset)
        run = shipped_for_inputs(task, inputs, preset=preset)
    catalogue = predict_catalog(inputs, out, run=run, task=task, batch_size=batch_size, tta=tta,
                                rescore_top=rescore_top, rescore_min=rescore_min, device=device,
                                num_workers=num_workers, allow_pickle=allow_pickle,
                                band_suffixes=[b.strip() for b in bands.split(",")] if bands else None,
                                shard=_parse_shard(shard) if shard else None, progress=progress,
                                prevalence=prevalence, on_bad=on_bad)
    typer.echo(f"predictions written to {catalogue.path} ({catalogue.scored} cutout(s) scored)")
    if catalogue.skipped:
        typer.secho(f"{len(catalogue.skipped)} cutout(s) skipped, listed with the reason in {catalogue.skipped_path}",
                    err=True, fg=typer.colors.YELLOW)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected K/N, e.g. 0/8") from None
    return index, count


@app.command()
def cutouts(
    tiles: list[Path] = typer.Argument(..., help="per-band FITS tiles with a WCS, named NAME_<band>.fits"),
    catalogue: Path = typer.Option(..., help="objects to cut out: id, ra, dec (degrees); .parquet, .csv or FITS table"),
    bands: str = typer.Option(..., help="band suffixes in channel order, e.g. g,r,i"),
    out: Path = typer.Option(..., help="cube to write: .h5, .hdf5 or .zarr"),
    size: Optional[int] = typer.Option(None, help="cutout side in pixels (default: the preset's, else 64)"),
    preset: Optional[str] = typer.Option(None, help="require the pixel scale of this simulator preset (the model's)"),
    pixel_scale: Optional[float] = typer.Option(None, help="require this pixel scale (arcsec) instead"),
    edge: str = typer.Option("pad", help="a cutout running off its tile: pad (zeros, flagged) | skip (rejected)"),
    class_names: Optional[str] = typer.Option(None, help="with a label column in the catalogue: the class names in "
                                                         "label order, e.g. nonlens,lens (the cube's class_names)"),
):
    """Cut catalogue objects out of FITS tiles into a cube (id, ra, dec, edge flags) for `lensfinder predict`; a
    catalogue with label (and split) columns gives a labelled cube for `lensfinder train --data`."""
    from .survey.engine import make_cutouts

    cube = make_cutouts(tiles, catalogue, out, bands=[b.strip() for b in bands.split(",")], size=size, preset=preset,
                        pixel_scale_arcsec=pixel_scale, edge=edge,
                        class_names=[c.strip() for c in class_names.split(",")] if class_names else None)
    typer.echo(f"{cube.rows} cutout(s) written to {cube.path}")
    if cube.rejected:
        typer.secho(f"{cube.rejected} object(s) rejected, listed with the reason in {cube.rejected_path}", err=True,
                    fg=typer.colors.YELLOW)


@app.command()
def merge(
    parts: Path = typer.Argument(..., help="parts folder of a cube/tiles `lensfinder predict` run (OUT.parts)"),
    out: Path = typer.Option(..., help="ranked catalogue: .parquet, .csv or .fits"),
    top: Optional[int] = typer.Option(None, help="keep only the K best-scored rows"),
):
    """Merge the Parquet parts of a survey run into one catalogue ranked by score (float64), streaming."""
    from .survey.merge import merge_parts

    result = merge_parts(parts, out, top=top)
    typer.echo(f"catalogue written to {result.path} ({result.rows} row(s))")
    if result.rejected:
        typer.secho(f"{result.rejected} row(s) rejected, listed with the reason in {result.rejected_path}", err=True,
                    fg=typer.colors.YELLOW)


@app.command()
def psf(
    cutouts: Path = typer.Argument(..., help="folder of .npy / FITS cutouts ((C, H, W), or NAME_<band>.fits per band) "
                                   "or a .h5 / .zarr cube"),
    out: Path = typer.Option(..., help="folder to write psf_<band>.fits and psf.json into"),
    bands: str = typer.Option("g,r,i", help="the cutouts' bands in channel order"),
    size: int = typer.Option(21, help="PSF image side in pixels (odd); a star needs its whole stamp and 2 pixels inside the cutout"),
    min_snr: float = typer.Option(30.0, help="least peak significance (per pixel, bands summed) of a star"),
    max_stars: int = typer.Option(200, help="stack at most this many stars (the highest S/N)"),
    saturation: Optional[float] = typer.Option(None, help="pixel value at which the detector saturates (stars reaching "
                                                          "it are left out; flat-topped stars always are)"),
):
    """Build a PSF image per band from the compact, unsaturated, isolated point sources in the cutouts (recentred
    with sub-pixel shifts, normalised, median-stacked), for `lensfinder simulate lensfinding --hosts ... --psf OUT`."""
    from .hosts.psf import build_psf
    from .hosts.read import HostSet

    result = build_psf(HostSet(cutouts, bands=[b.strip() for b in bands.split(",") if b.strip()]), out, size=size,
                       min_snr=min_snr, max_stars=max_stars, saturation=saturation)
    typer.echo(f"{len(result.stars)} star(s) of {result.candidates} candidate(s) stacked; FWHM "
               f"{', '.join(f'{f:.2f}' for f in result.fwhm_pix)} px; written to {', '.join(str(f) for f in result.files)}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="folder for the demo's data, runs and report"),
    scale: str = typer.Option("small", help="small (minutes on a laptop) | full (published counts, report epochs)"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Simulate both tasks, train the report's baselines and lensfinder's defaults, and compare them in one report."""
    from .demo import run_demo

    report = run_demo(out, scale=scale, seed=seed, progress=progress)
    typer.echo(f"comparison report: {report}")
    typer.echo(f"grade the demo's candidates in a browser: lensfinder inspect {Path(out) / 'candidates.csv'} --grader $USER")


@app.command()
def models():
    """List the registered models."""
    from .models import describe_models

    for name, description in describe_models().items():
        typer.echo(f"{name:20s} {description}")


@app.command()
def inspect(
    catalogue: Path = typer.Argument(..., help="ranked catalogue written by `lensfinder predict` (CSV)"),
    port: int = typer.Option(8000, help="port to serve on (0: a free one)"),
    grader: Optional[str] = typer.Option(None, help="your name; the page asks when it is not given"),
    db: Optional[Path] = typer.Option(None, help="SQLite grades database (default: grades.sqlite beside the catalogue)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; the default serves this machine only"),
):
    """Grade the candidates in a browser: a grid of colour composites in rank order, a zoomed view (Enter), keys
    0-3 (0 not a lens, 1 possible, 2 probable, 3 definite) grade and move on, u undoes. Each grade is saved to the
    SQLite database the moment the key is pressed; several graders (?grader=NAME) may grade at once."""
    from .inspect.server import serve

    serve(catalogue, db=db, host=host, port=port, grader=grader, announce=typer.echo)


@app.command()
def grades(
    db: Path = typer.Argument(..., help="grades database written by `lensfinder inspect`"),
    out: Optional[Path] = typer.Option(None, help="graded table: .csv | .fits | .parquet (agreement goes to "
                                                  "<out>.agreement.json beside it)"),
    gallery: Optional[Path] = typer.Option(None, help="static HTML page of the A and B lenses, images inlined"),
    labelled_folder: Optional[Path] = typer.Option(None, help="write the graded cutouts as a lens-finding layout "
                                                              "(train_lenses/, train_nonlenses/) for fine-tuning"),
    min_class: str = typer.Option("B", help="with --labelled-folder: the lowest class copied to train_lenses "
                                            "(A | B | C)"),
):
    """Summarise the grades: each object's mean grade, number of graders, spread and HOLISMOKES class (A: mean >
    2.5; B: 1.5 < mean <= 2.5; C: 0.5 < mean <= 1.5; else not a lens), and the agreement between graders
    (pairwise Cohen's and Fleiss' kappa).

    Closing the loop (fine-tuning on the graders' labels):

      lensfinder grades grades.sqlite --labelled-folder DIR [--min-class B]

      lensfinder train --task lensfinding --data DIR --out runs/finetuned

    DIR/train_lenses gets copies of the lenses of class --min-class or better (default: A and B).
    DIR/train_nonlenses gets the objects graded not a lens (mean grade <= 0.5); the rest are left out.
    Training holds out a seeded validation share of them (and a test share with --test-fraction 0.1).
    """
    from .inspect import results

    if out is not None:
        results.check_output(out)
    objects = results.load_objects(db)
    report = results.agreement(objects)
    typer.echo(f"{report['n_objects']} graded object(s) by {len(report['graders'])} grader(s): "
               + ", ".join(f"{n} {c}" for c, n in report["classes"].items()))
    fleiss = report["fleiss_kappa"]
    typer.echo(f"Fleiss' kappa {'n/a' if fleiss is None else f'{fleiss:.3f}'} over {report['fleiss_n_objects']} "
               "object(s) with 2+ graders")
    for pair in report["pairwise"]:
        kappa = pair["cohen_kappa"]
        typer.echo(f"  Cohen's kappa {pair['graders'][0]} / {pair['graders'][1]}: "
                   f"{'n/a' if kappa is None else f'{kappa:.3f}'} over {pair['n_objects']} object(s)")
    if out is not None:
        results.write_table(objects, out)
        agreement_path = results.write_agreement(report, results.agreement_path_for(out))
        typer.echo(f"graded table written to {out}; agreement to {agreement_path}")
    if gallery is not None:
        typer.echo(f"gallery written to {results.write_gallery(objects, gallery)}")
    if labelled_folder is not None:
        labelled = results.write_labelled_folder(objects, labelled_folder, min_class=min_class)
        typer.echo(f"labelled folder written to {labelled_folder}: {labelled.lenses} lens(es), {labelled.nonlenses} "
                   f"non-lens(es); train on it with `lensfinder train --task lensfinding --data {labelled_folder} "
                   "--out runs/finetuned`")
        for object_id, reason in labelled.skipped:
            typer.secho(f"left out: {reason}", err=True, fg=typer.colors.YELLOW)


def main() -> None:
    try:
        app()
    except InputError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
