"""The Python API: simulate a set, train, evaluate, load a model and score images, each one call.

Every function here calls the same library function as the command line (`lensfinder simulate | train |
evaluate | predict`), so a notebook and a shell give the same files and the same scores. Torch, Lightning and
the simulator are imported inside the functions: ``import lensfinder`` stays fast.

Images are float32 arrays laid out (C, H, W) per object, or (N, C, H, W) for a batch: one band for the
substructure task (DeepLense Model I-III, 64 x 64 or 150 x 150 pixels), three bands in the order g, r, i for
lens finding (64 x 64 pixels of 0.2 arcsec for LSST-like cutouts), in the units the model was trained on
(nanomaggies, AB zero point 22.5, for the shipped lens-finding weights). The models normalise internally:
pass pixel values, not standardised ones.

    import lensfinder
    model = lensfinder.load_model("shipped", task="lensfinding")
    table = lensfinder.predict(model, images)        # images: (N, 3, 64, 64) in nanomaggies
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from .validation import InputError

if TYPE_CHECKING:  # imported for the annotations only: these load torch
    import pandas as pd

    from .config import TrainConfig
    from .train.module import LensModule
    from .train.run import Run

PathLike = Union[str, "os.PathLike[str]"]
TASKS = ("substructure", "lensfinding")
# Each task's simulator preset when none is given (the presets the shipped weights were trained on).
DEFAULT_PRESETS = {"substructure": "deeplense-model-iii", "lensfinding": "lsst-gri"}

__all__ = ["evaluate", "list_models", "list_presets", "load_model", "predict", "shipped_models", "simulate", "train"]


def _check_task(task: str | None, *, why: str) -> str:
    if task not in TASKS:
        raise InputError(f"task {task!r}: {why} needs task='substructure' or task='lensfinding'")
    return task


# ----------------------------------------------------------------------------------------------------- listings
def list_presets(task: str | None = None) -> dict[str, str]:
    """Simulator presets, name -> one-line description (the YAML files in ``lensfinder/simulate/presets/``).

    `task` ('substructure' or 'lensfinding') keeps only that task's presets."""
    from .simulate.presets import list_presets as presets, load_preset

    found = presets()
    if task is None:
        return found
    _check_task(task, why="filtering presets")
    return {name: text for name, text in found.items() if load_preset(name)["task"] == task}


def list_models() -> dict[str, str]:
    """Registered model architectures, name -> one-line description (what ``lensfinder models`` prints)."""
    from .models import describe_models

    return describe_models()


def shipped_models() -> list[dict]:
    """The weights shipped inside the package, one dict each: path, task, preset (the simulator preset they were
    trained on), channels, size (input pixels per side) and model (architecture)."""
    from .evaluate.shipped import shipped_catalog

    return shipped_catalog()


# ----------------------------------------------------------------------------------------------------- simulate
def simulate(task: str, out: PathLike, *, preset: str | None = None, counts: dict[str, int] | None = None,
             seed: int = 0, workers: int = 1, batch_size: int = 256, device: str = "cpu", progress: bool = False,
             distances: str | None = None, noise: bool | None = None, axion_pickle: bool = False,
             confusers: Sequence[str] | None = None) -> Path:
    """Simulate a data set into folder `out` in the task's published layout; returns `out`.

    Substructure (`task='substructure'`, preset default 'deeplense-model-iii'): single-band (1, H, W) images,
    ``out/<split>/<no|sphere|vort>/*.npy``; `counts` gives the images *per class* of each split, e.g.
    ``{"train": 100, "val": 20, "test": 50}``. `distances` ('luminosity' or 'angular'), `noise` and
    `axion_pickle` apply to this task only.

    Lens finding (`task='lensfinding'`, preset default 'lsst-gri'): (3, 64, 64) float32 cutouts in nanomaggies,
    bands g, r, i, 0.2 arcsec pixels for the LSST presets, ``out/{train,test}_{lenses,nonlenses}/*.npy``;
    `counts` keys are train_lenses, train_nonlenses, test_lenses, test_nonlenses (None: the published
    1730 / 28675 / 195 / 19455). `confusers` chooses the look-alike families (None: all).

    Both write manifest.csv (one row of physical parameters per image, e.g. theta_e_arcsec) and
    simulation.yaml. The files depend on `seed` only, not on `workers` (CPU processes) or `batch_size`; an
    interrupted run resumes where it stopped. See `list_presets()` for the presets."""
    _check_task(task, why="simulate")
    preset = preset or DEFAULT_PRESETS[task]
    if task == "substructure":
        if confusers is not None:
            raise InputError("confusers: look-alike families belong to lens finding; drop it for task='substructure'")
        if counts is None:
            raise InputError("counts: give the images per class of each split, e.g. {'train': 100, 'val': 20, 'test': 50}")
        from .simulate import simulate_substructure

        return Path(simulate_substructure(out, preset=preset, counts=counts, seed=seed, batch_size=batch_size,
                                          device=device, distances=distances, noise=noise, progress=progress,
                                          axion_pickle=axion_pickle, workers=workers))
    if distances is not None or noise is not None or axion_pickle:
        raise InputError("distances / noise / axion_pickle: substructure options; drop them for task='lensfinding' "
                         "(the lens-finding noise follows the preset's depth)")
    from .simulate import simulate_lensfinding

    return Path(simulate_lensfinding(out, preset=preset, counts=counts, seed=seed, batch_size=batch_size, device=device,
                                     progress=progress, workers=workers,
                                     confusers=list(confusers) if confusers is not None else None))


# ----------------------------------------------------------------------------------------------------- train
def train(task: str, data: PathLike, out: PathLike, *, config: "TrainConfig | dict | PathLike | None" = None,
          resume: bool = False, progress: bool = False, **settings: Any) -> "Run":
    """Train a model on the data set in folder `data` (the task's layout) and write the run folder `out`;
    returns the `Run` (``run.path``, ``run.config``, ``run.model_path``).

    Settings are the fields of `lensfinder.config.TrainConfig`, given as keywords (``epochs=1, model='resnet-s',
    init='shipped', batch_size=32``) or as `config` (a TrainConfig, a dict or a YAML file; keywords override
    it). Those left out follow the model's recipe. ``init='shipped'`` fine-tunes from the shipped weights of
    the task (learning rate: the recipe's x 0.1 unless `lr` is given); ``freeze='stem' | 'body'`` keeps parts
    fixed. The run folder holds config.yaml, version.json, checkpoints/, history.csv, model.safetensors (all a
    model needs to predict), calibration.json, thresholds.json (lens finding) and figures/.
    ``resume=True`` continues the run in `out` from its last checkpoint. Same as ``lensfinder train``."""
    from dataclasses import asdict

    from .config import TrainConfig, load_yaml
    from .train.run import train as run_training

    source = "train() arguments"
    if config is None:
        values: dict = {}
    elif isinstance(config, TrainConfig):
        values = {k: v for k, v in asdict(config).items() if v is not None}
    elif isinstance(config, dict):
        values = dict(config)
    else:
        values, source = load_yaml(Path(config)), str(config)
    values.update(settings)
    values.update(task=task, data=str(data), out=str(out), progress=progress)
    return run_training(TrainConfig.from_dict(values, source=source), resume=resume)


# ----------------------------------------------------------------------------------------------------- evaluate
def evaluate(run: "PathLike | Run", data: PathLike, *, split: str = "test", task: str | None = None,
             out: PathLike | None = None, tta: bool | None = None, batch_size: int = 256,
             device: str = "auto") -> dict:
    """Score split `split` ('train', 'val' or 'test') of the data set in `data` with a trained run; returns the
    metrics (also written to the run's metrics.json, with figures/, predictions_<split>.csv and report.html).

    Binary lens finding: 'auc', 'average_precision', 'tpr0' and 'tpr10' (the share of lenses ranked above the
    first / the tenth non-lens), 'tpr_at_fpr_1e-3', 'accuracy', 'ece', the Einstein-radius and arc-S/N
    'breakdown'. Substructure: 'accuracy', 'auc' (macro one-vs-rest), 'auc_per_class', 'confusion_matrix'.
    Ranking metrics use the float64 log-odds, which do not saturate.

    `run` is a run folder written by `train`, or 'shipped' with `task` for the shipped weights (a run folder
    around them is written to `out`, default a new temporary folder; its path is returned under 'run')."""
    from .evaluate.evaluate import evaluate as run_evaluation

    if isinstance(run, str) and run == "shipped":
        from .evaluate.shipped import shipped_for_inputs, shipped_run

        _check_task(task, why="evaluate('shipped', ...)")
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"lensfinder-shipped-{task}-"))
        split_folder = _first_split_folder(Path(data), task, split)
        weights = shipped_for_inputs(task, [split_folder] if split_folder else [])
        run = shipped_run(task, Path(data), folder, weights=weights)
    result = run_evaluation(run, Path(data), split=split, tta=tta, batch_size=batch_size, device=device)
    return {**result, "run": str(getattr(run, "path", run))}


def _first_split_folder(data: Path, task: str, split: str) -> Path | None:
    """A folder of `split`'s images in `data`, to read the input shape from (None: the task's default weights)."""
    candidates = [data / split] if task == "substructure" else [data / f"{split}_lenses", data / f"{split}_nonlenses"]
    return next((c for c in candidates if c.is_dir()), None)


# ----------------------------------------------------------------------------------------------------- models
def load_model(source: "PathLike | LensModule" = "shipped", *, task: str | None = None, preset: str | None = None,
               channels: int | None = None, size: int | None = None) -> "LensModule":
    """A trained model, in eval mode, as a `torch.nn.Module` (a `LensModule`) for your own code.

    `source`: 'shipped' (with `task`; `preset`, `channels`, `size` choose among the shipped weights, see
    `shipped_models()`), a run folder written by `train`, or a model.safetensors file. `task`, given with a
    run, must agree with it.

    ``model(x)`` takes raw pixels x of shape (N, C, H, W), float32, in the training units (nanomaggies, bands
    g, r, i, for the shipped lens-finding weights), normalises them itself and returns logits (N, K) in the
    order of ``model.hparams.class_names`` (['nonlens', 'lens'] or ['no', 'sphere', 'vort']).
    ``model.predict_logits(x)`` gives calibrated float64 log-probabilities averaged over the 8 D4 views;
    ``model.model`` is the bare network (``forward_features`` gives embeddings). ``model.hparams`` holds
    task, in_channels, image_size, preset and the normalisation."""
    from .evaluate.predict import resolve_model
    from .evaluate.shipped import shipped_weights
    from .train.module import LensModule

    if isinstance(source, LensModule):
        if task is not None and task != source.hparams.task:
            raise InputError(f"task {task!r} disagrees with the model given, a {source.hparams.task} model")
        return source
    if isinstance(source, str) and source == "shipped":
        _check_task(task, why="load_model('shipped')")
        return resolve_model(run=shipped_weights(task, preset=preset, channels=channels, size=size))
    if preset is not None or channels is not None or size is not None:
        raise InputError("preset / channels / size choose among the shipped weights; drop them when loading "
                         f"{source}")
    return resolve_model(run=Path(source), task=task)


# ----------------------------------------------------------------------------------------------------- predict
def predict(model: "LensModule | PathLike", inputs: Any, *, task: str | None = None, preset: str | None = None,
            ids: Sequence | None = None, out: PathLike | None = None, batch_size: int = 256,
            tta: bool | str | None = None, rescore_top: float = 0.01, rescore_min: int = 1000, device: str = "auto",
            prevalence: float | None = None, bands: Sequence[str] | None = None, on_bad: str = "skip",
            allow_pickle: bool = False, num_workers: int = 0, progress: bool = False) -> "pd.DataFrame":
    """Score images and return a pandas DataFrame ranked by score (highest first), index 'rank' from 1.

    Columns: ``id``; ``p_<class>`` for each class (calibrated probabilities, float64); ``score``, the float64
    log-odds (natural log) of the positive class for lens finding (log p_lens / (1 - p_lens)) or of the
    predicted class for substructure, which never saturates where probabilities round to 1; ``predicted``,
    the most probable class; ``views``, the D4 views averaged for the row (1 or 8). ``df.attrs`` records task,
    model, class_names, tta, rescore_top and lensfinder_version.

    `model`: a loaded model (`load_model`), a run folder or .safetensors file, or 'shipped' with `task`.

    `inputs`:
      * a NumPy array (or torch tensor) of shape (N, C, H, W) or one image (C, H, W), float, in the units
        the model was trained on (nanomaggies, bands g, r, i for the shipped lens-finding weights; C, H, W
        must match the model). ``id`` is the row number in `inputs`, or `ids` when given. Scored in memory.
      * a path or a list of paths: .npy / FITS files (one (C, H, W) or (H, W) cutout each) or folders of them,
        scored exactly as ``lensfinder predict`` scores them (the same function); ``id`` is the file's path.
        With `bands` (e.g. ['g', 'r', 'i']) each object is NAME_g.fits, NAME_r.fits, NAME_i.fits.
        `out` (.csv) also keeps the catalogue there, as the CLI writes it. Unreadable or misshapen cutouts
        are skipped and listed in ``df.attrs['skipped']`` (``on_bad='fail'`` stops instead).
      * a catalogue: a DataFrame, or a .csv file, with a ``path`` column of cutout files (relative paths are
        taken from the CSV's folder), scored like a list of paths.

    `prevalence` (binary, calibrated models) re-expresses p_lens for a population with that lens fraction,
    e.g. 1e-3; the ranking does not change.

    `tta` chooses which objects get the average over the 8 D4 views: "top" (the lens finder's default: every
    object is scored with one view, then the best-scored `rescore_top` share, default 1 % and at least
    `rescore_min` (1,000) objects, again with the 8),
    "all" (or True: every object), "none" (or False: one view each); None follows the model (trained with
    averaging: "top" for lens finding, "all" for substructure)."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame) or _is_csv(inputs):
        inputs = _catalogue_paths(inputs)
    if _is_array(inputs):
        if bands is not None or out is not None:
            raise InputError("bands / out apply to files; an array is scored in memory (save the DataFrame with "
                             "df.to_csv to keep it)")
        return _predict_array(model, inputs, task=task, preset=preset, ids=ids, batch_size=batch_size, tta=tta,
                              rescore_top=rescore_top, rescore_min=rescore_min, device=device, prevalence=prevalence)
    if ids is not None:
        raise InputError("ids: files are keyed by their paths; ids apply to an array")
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    return _predict_files(model, paths, task=task, preset=preset, out=out, batch_size=batch_size, tta=tta,
                          rescore_top=rescore_top, rescore_min=rescore_min, device=device, prevalence=prevalence, bands=bands, on_bad=on_bad,
                          allow_pickle=allow_pickle, num_workers=num_workers, progress=progress)


def _is_csv(inputs: Any) -> bool:
    return isinstance(inputs, (str, os.PathLike)) and str(inputs).lower().endswith(".csv")


def _is_array(inputs: Any) -> bool:
    if isinstance(inputs, np.ndarray):
        return True
    torch = __import__("sys").modules.get("torch")
    return torch is not None and isinstance(inputs, torch.Tensor)


def _catalogue_paths(catalogue: Any) -> list[Path]:
    """The cutout files a catalogue lists in its `path` column (relative paths: from the CSV's folder)."""
    import pandas as pd

    base = None
    if not isinstance(catalogue, pd.DataFrame):
        base = Path(catalogue).parent
        if not Path(catalogue).is_file():
            raise InputError(f"{catalogue}: no such catalogue")
        catalogue = pd.read_csv(catalogue)
    column = next((c for c in ("path", "id") if c in catalogue.columns), None)
    if column is None:
        raise InputError(f"catalogue: expected a 'path' column of cutout files, found columns {list(catalogue.columns)}")
    paths = []
    for value in catalogue[column]:
        path = Path(str(value))
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        paths.append(path)
    if not paths:
        raise InputError("catalogue: no rows; list the cutout files to score in its 'path' column")
    return paths


def _model_for(model: "LensModule | PathLike", task: str | None, preset: str | None, *, channels: int | None = None,
               size: int | None = None) -> "LensModule":
    if isinstance(model, str) and model == "shipped":
        return load_model("shipped", task=task, preset=preset, channels=channels, size=size)
    if preset is not None:
        raise InputError("preset chooses among the shipped weights; pass model='shipped' with it")
    return load_model(model, task=task)


def _check_prevalence(module: "LensModule", prevalence: float | None) -> None:
    if prevalence is None:
        return
    if module.hparams.num_classes != 2 or not module.hparams.get("calibration"):
        raise InputError("prevalence: needs a calibrated binary (lens-finding) model")
    if not 0 < prevalence < 1:
        raise InputError(f"prevalence must be in (0, 1), got {prevalence}")


def _predict_array(model, images, *, task, preset, ids, batch_size, tta, rescore_top, rescore_min, device,
                   prevalence) -> "pd.DataFrame":
    from .evaluate.inference import tta_plan, two_pass_logits_array
    from .evaluate.predict import _device
    from .validation import check_channels

    if not isinstance(images, np.ndarray):
        images = images.detach().cpu().numpy()
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise InputError(f"images: expected shape (N, C, H, W) or (C, H, W), found {images.shape}; a single-band "
                         "(H, W) image is image[None], a batch of them images[:, None]")
    if len(images) == 0:
        raise InputError(f"images: expected at least one image, found shape {images.shape}")
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise InputError(f"images: expected a numeric array, found dtype {images.dtype}")
    module = _model_for(model, task, preset, channels=images.shape[1], size=images.shape[-1])
    hp = module.hparams
    check_channels(images.shape[1:], expected_channels=hp.in_channels, expected_size=hp.image_size, source="images")
    with np.errstate(over="ignore", invalid="ignore"):
        images = np.ascontiguousarray(images, dtype=np.float32)
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"images: {len(bad)} image(s) hold NaN or infinite pixels (or exceed float32), first at "
                         f"index {bad[0]}; clean or mask them before scoring")
    if ids is None:
        ids = np.arange(len(images))
    elif len(ids) != len(images):
        raise InputError(f"ids: expected one id per image ({len(images)}), found {len(ids)}")
    if batch_size < 1:
        raise InputError(f"batch_size: expected >= 1, found {batch_size}")
    _check_prevalence(module, prevalence)
    _device(device)  # a device that does not exist is an InputError, as on the command line
    mode, share = tta_plan(hp, tta, rescore_top, rescore_min)
    logits, views = two_pass_logits_array(module, images, mode=mode, share=share, batch_size=batch_size,
                                          device=device, prevalence=prevalence,
                                          positive=1 if hp.num_classes == 2 else None, minimum=rescore_min)
    return _ranked_table(list(ids), logits, views, module, mode=mode, share=share, minimum=rescore_min)


def _ranked_table(ids: list, logits: np.ndarray, views: np.ndarray, module: "LensModule", *, mode: str,
                  share: float, minimum: int) -> "pd.DataFrame":
    """The catalogue's rows (as `predict_catalog` writes them) from float64 logits (N, K), ranked by score."""
    import pandas as pd

    from . import __version__
    from .evaluate.inference import softmax
    from .metrics import log_odds

    names = list(module.hparams.class_names)
    probs = softmax(logits)
    scores = log_odds(logits, positive=1 if len(names) == 2 else None)
    order = np.argsort(-scores, kind="stable")
    table = pd.DataFrame({"id": [ids[i] for i in order],
                          **{f"p_{c}": probs[order, k] for k, c in enumerate(names)},
                          "score": scores[order].astype(np.float64),
                          "predicted": [names[k] for k in logits[order].argmax(1)],
                          "views": views[order].astype(np.int64)},
                         index=pd.RangeIndex(1, len(order) + 1, name="rank"))
    table.attrs.update(_attrs(module, mode=mode, share=share, minimum=minimum, version=__version__))
    return table


def _attrs(module: "LensModule", *, mode: str, share: float, minimum: int, version: str) -> dict:
    hp = module.hparams
    return {"task": hp.task, "model": hp.model_name, "preset": hp.get("preset"), "class_names": list(hp.class_names),
            "tta": mode, "rescore_top": share if mode == "top" else None,
            "rescore_min": minimum if mode == "top" else None, "lensfinder_version": version}


def _predict_files(model, paths: list[Path], *, task, preset, out, batch_size, tta, rescore_top, rescore_min, device,
                   prevalence, bands, on_bad, allow_pickle, num_workers, progress) -> "pd.DataFrame":
    import pandas as pd

    from . import __version__
    from .evaluate.predict import predict_catalog
    from .evaluate.shipped import shipped_for_inputs
    from .train.module import LensModule
    from .train.run import export_model

    with tempfile.TemporaryDirectory(prefix="lensfinder-predict-") as scratch:
        if isinstance(model, LensModule):  # predict_catalog reads a model file: hand it this one's
            if task is not None and task != model.hparams.task:
                raise InputError(f"task {task!r} disagrees with the model given, a {model.hparams.task} model")
            run, module = Path(scratch) / "model.safetensors", model
            export_model(model, run)
        elif isinstance(model, str) and model == "shipped":
            _check_task(task, why="predict('shipped', ...)")
            run = shipped_for_inputs(task, paths, preset=preset)  # as `lensfinder predict --task` chooses
            module = load_model(run)
        else:
            if preset is not None:
                raise InputError("preset chooses among the shipped weights; pass model='shipped' with it")
            run = Path(model)
            module = load_model(run, task=task)
        target = Path(out) if out is not None else Path(scratch) / "catalogue.csv"
        catalogue = predict_catalog(paths, target, run=run, batch_size=batch_size, tta=tta, rescore_top=rescore_top,
                                    rescore_min=rescore_min, device=device,
                                    num_workers=num_workers, allow_pickle=allow_pickle,
                                    band_suffixes=list(bands) if bands else None, progress=progress,
                                    prevalence=prevalence, on_bad=on_bad)
        table = pd.read_csv(catalogue.path, float_precision="round_trip", dtype={"path": str})
    table = table.rename(columns={"path": "id"}).set_index("rank")
    table["score"] = table["score"].astype(np.float64)
    from .evaluate.inference import tta_plan

    mode, share = tta_plan(module.hparams, tta, rescore_top, rescore_min)
    table.attrs.update(_attrs(module, mode=mode, share=share, minimum=rescore_min, version=__version__))
    table.attrs["skipped"] = list(catalogue.skipped)
    if out is not None:
        table.attrs["catalogue"] = str(catalogue.path)
    return table
