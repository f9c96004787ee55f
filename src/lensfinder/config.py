"""Typed training configuration. Fields left at None are filled from the recipe of the chosen model.

Precedence, lowest first: recipe defaults < YAML file (--config) < command-line flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from .data.normalize import NOISE_FREE_PEAK_FLOOR
from .validation import InputError

# The default model of each task (the best measured one; see benchmarks/quality.py). resnet-pool-s is resnet-s at
# 64 px and averages 150 px images down to 75 first (the noisy 150 x 150 sets learn; benchmarks/substructure150.py).
DEFAULT_MODELS = {"substructure": "resnet-pool-s", "lensfinding": "resnet-s"}

# Recipes are data. "report" is the evaluation report's training, exactly (sections 2.2.3 and 3.2.3);
# it does not state a batch size, 64 is ours.
RECIPES: dict[str, dict[str, dict]] = {
    "report": {
        "substructure": dict(epochs=25, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="plateau",
                             normalization="channel", augment=False, tta=False, class_weights="none", sampling="shuffle",
                             peak_floor=NOISE_FREE_PEAK_FLOOR),
        "lensfinding": dict(epochs=20, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="plateau",
                            normalization="channel", augment=False, tta=False, class_weights="balanced", sampling="shuffle",
                            peak_floor=NOISE_FREE_PEAK_FLOOR),
    },
    "lensfinder": {
        "substructure": dict(epochs=12, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=5e-4, scheduler="onecycle",
                             normalization="asinh", augment=True, tta=True, class_weights="none", sampling="shuffle",
                             peak_floor=NOISE_FREE_PEAK_FLOOR),
        # Balanced batches, not class weights: with 1 lens in 17 images, weighted loss learned far slower
        # (validation AUC 0.77 vs 0.93 after the same 800 steps; benchmarks/results/recipe_probe/).
        # AdamW (decoupled decay), as in that probe. Peak floor 1e-6: the asinh stretch scales by the noise,
        # not by a bright star's peak (at 1e-3, 40 % of test lenses had their arcs flattened and scored lower).
        "lensfinding": dict(epochs=22, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=5e-4, scheduler="onecycle",
                            normalization="asinh", augment=True, tta=True, class_weights="none", sampling="balanced",
                            peak_floor=1e-6),
    },
}
SCHEDULERS = ("plateau", "onecycle", "cosine")
OPTIMIZERS = ("adam", "adamw")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLINGS = ("shuffle", "balanced")
# Settings that are not part of a recipe: their defaults (see the comments on TrainConfig).
RUN_DEFAULTS = dict(val_fraction=0.1, test_fraction=0.0, seed=0, num_workers=0, accelerator="auto", devices="auto", num_nodes=1,
                    strategy="auto", precision="32-true", deterministic=False, allow_pickle=False, stream=False,
                    steps_per_epoch=200, early_stopping=0, progress=True, freeze="none")
FREEZES = ("none", "stem", "body")
# Starting from trained weights (--init) the recipe's learning rate is scaled by this unless --lr is given:
# the features are there already, and the full rate would first undo them.
INIT_LR_FACTOR = 0.1
STREAM_LENS_FRACTION = 0.5  # the stream's default share of lenses (balanced)


@dataclass
class TrainConfig:
    task: str  # "substructure" or "lensfinding"
    data: str  # data root in the task's layout (see README)
    out: str  # the run folder this training writes
    model: str | None = None  # registry name; None: the task's default model
    recipe: str | None = None  # "report" or "lensfinder"; None: "report" for report-* models, else "lensfinder"
    epochs: int | None = None  # recipe: 25 (substructure) / 20 (lensfinding) for the report
    batch_size: int | None = None  # recipe: 64
    optimizer: str | None = None  # adam (report: weight decay as an L2 term) | adamw (decoupled weight decay)
    lr: float | None = None  # learning rate; report 1e-3 (peak rate for onecycle)
    weight_decay: float | None = None  # report 1e-4
    scheduler: str | None = None  # plateau (report: factor 0.5, patience 3 on val loss) | onecycle | cosine
    normalization: str | None = None  # channel (report) | minmax | asinh | log | none
    peak_floor: float | None = None  # asinh / log: noise level at least this x the band's peak (1e-3 noise-free sims)
    augment: bool | None = None  # random D4 symmetry per training image
    tta: bool | None = None  # average predictions over the 8 D4 views at evaluation
    class_weights: str | None = None  # balanced: w_c = N / (K N_c) (report, lens finding) | none
    sampling: str | None = None  # shuffle: each image once per epoch | balanced: every class equally often (with replacement)
    # Left at None, the settings below take the default in their comment (RUN_DEFAULTS); None means "not given",
    # which is how `--resume` tells a changed setting from one the user left alone.
    val_fraction: float | None = None  # 0.1: stratified validation share when the layout has no val split
    test_fraction: float | None = None  # 0.0: stratified share of train held out as the test split (layouts without one); 0: none
    seed: int | None = None  # 0: seeds model init, split, shuffling, augmentation and the stream
    num_workers: int | None = None  # 0: DataLoader worker processes (0: load in the training process)
    accelerator: str | None = None  # "auto": cpu | gpu | auto
    devices: str | None = None  # "auto": number of devices (processes) per node, or "auto"
    num_nodes: int | None = None  # 1: nodes for multi-node DDP
    strategy: str | None = None  # "auto": Lightning strategy; "ddp" for several devices
    precision: str | None = None  # "32-true": Lightning precision, e.g. "bf16-mixed" on GPUs
    deterministic: bool | None = None  # False: torch.use_deterministic_algorithms (identical weights run to run)
    allow_pickle: bool | None = None  # False: allow pickled object arrays (axion [image, m_a] files): runs code, opt in only
    cache_dir: str | None = None  # packed-array cache; None: $LENSFINDER_CACHE or ~/.cache/lensfinder
    stream: bool | None = None  # False: train on an endless simulated stream (validation still on --data)
    stream_preset: str | None = None  # simulator preset of the stream; required with stream
    lens_fraction: float | None = None  # lens finding stream: share of lenses drawn; 0.5 (and must be, with balanced sampling)
    steps_per_epoch: int | None = None  # 200: batches per epoch when streaming
    early_stopping: int | None = None  # 0: stop after this many epochs without val-loss improvement; 0: never
    progress: bool | None = None  # True: progress bar
    init: str | None = None  # None: random weights; "shipped" (the task's shipped weights) or a run folder / .safetensors
    freeze: str | None = None  # "none": with --init, "stem" keeps the stem's trained weights fixed, "body" trains only the head

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the model's recipe, and every value checked."""
        from .data.layouts import check_task
        from .models import list_models

        check_task(self.task)
        model = self.model or DEFAULT_MODELS[self.task]
        if model not in list_models():
            raise InputError(f"unknown model {model!r}; known models: {', '.join(list_models())}")
        recipe = self.recipe or ("report" if model.startswith("report-") else "lensfinder")
        if recipe not in RECIPES:
            raise InputError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
        filled = {k: v for k, v in {**RECIPES[recipe][self.task], **RUN_DEFAULTS}.items() if getattr(self, k) is None}
        if self.init and self.lr is None:
            filled["lr"] = RECIPES[recipe][self.task]["lr"] * INIT_LR_FACTOR
        cfg = replace(self, model=model, recipe=recipe, **filled)
        if cfg.stream and cfg.task == "lensfinding" and cfg.lens_fraction is None:
            cfg = replace(cfg, lens_fraction=STREAM_LENS_FRACTION)
        cfg._check()
        return cfg

    def _check(self) -> None:
        from .data.normalize import KINDS

        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")
        if self.normalization not in KINDS:
            raise InputError(f"unknown normalisation {self.normalization!r}; expected one of {', '.join(KINDS)}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise InputError(f"unknown class weights {self.class_weights!r}; expected one of {', '.join(CLASS_WEIGHTS)}")
        if self.sampling not in SAMPLINGS:
            raise InputError(f"unknown sampling {self.sampling!r}; expected one of {', '.join(SAMPLINGS)}")
        for name in ("epochs", "batch_size", "lr", "steps_per_epoch"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.peak_floor < 1:
            raise InputError(f"peak_floor must be in [0, 1), got {self.peak_floor}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise InputError(f"test_fraction must be in [0, 1), got {self.test_fraction}; e.g. --test-fraction 0.1")
        if self.freeze not in FREEZES:
            raise InputError(f"unknown --freeze {self.freeze!r}; expected one of {', '.join(FREEZES)}")
        if self.freeze != "none" and not self.init:
            raise InputError(f"--freeze {self.freeze} keeps trained weights fixed, so it needs --init shipped (or a run "
                             "folder) to start from")
        if self.stream and not self.stream_preset:
            raise InputError("streaming needs a simulator preset: pass --stream-preset (e.g. deeplense-model-iii or lsst-gri)")
        if self.lens_fraction is not None:
            if not self.stream or self.task != "lensfinding":
                raise InputError(f"--lens-fraction {self.lens_fraction}: sets the share of lenses in the simulated "
                                 f"lens-finding stream; it needs --task lensfinding --stream (a fixed data set has "
                                 f"the composition of its files: use --sampling balanced to even it out)")
            if not 0.0 < self.lens_fraction < 1.0:
                raise InputError(f"--lens-fraction: expected a share of lenses in (0, 1), e.g. 0.5, found {self.lens_fraction}")
            if self.sampling == "balanced" and self.lens_fraction != STREAM_LENS_FRACTION:
                raise InputError(f"--sampling balanced draws every class equally often, which a stream of "
                                 f"{self.lens_fraction:g} lenses is not; pass --sampling shuffle to train on the stream "
                                 f"as drawn (class weights then follow its composition), or drop --lens-fraction")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def load_yaml(path: Path) -> dict:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read YAML configuration ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of setting: value, found {type(values).__name__}")
    return values
