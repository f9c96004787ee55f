"""`lensfinder demo`: simulate both tasks, train the report's baseline and lensfinder's default model on
each, evaluate them and the shipped weights on held-out data and write one comparison report.

The `small` scale fits a fresh 2-core laptop in minutes: fewer images and epochs than the report, so the
models trained here show the pipeline working end to end, not its ceiling; the shipped weights (trained at
full scale, see benchmarks/quality.py) show that on the same test images. Those images are held out from
the shipped models' training: every simulated object's seed depends on its split, so a test split never
repeats a training object.
"""

from __future__ import annotations

import time
from pathlib import Path

from .validation import InputError

# Data sizes and epoch budgets per scale (per class for substructure; per folder for lens finding).
SCALES = {
    "small": {
        "substructure": {"preset": "deeplense-model-iii", "counts": {"train": 600, "val": 100, "test": 200},
                         "epochs": {"baseline": 5, "default": 10}},
        # Lenses are over-represented in the small training set (1:3) so a few minutes of training learn them;
        # the test set keeps a survey-like imbalance (1:50).
        "lensfinding": {"preset": "lsst-gri", "counts": {"train_lenses": 1200, "train_nonlenses": 3600,
                                                         "test_lenses": 60, "test_nonlenses": 3000},
                        "epochs": {"baseline": 3, "default": 10}},
    },
    "full": {
        "substructure": {"preset": "deeplense-model-iii", "counts": {"train": 10000, "val": 2500, "test": 2500},
                         "epochs": {"baseline": None, "default": None}},
        "lensfinding": {"preset": "lsst-gri", "counts": None, "epochs": {"baseline": None, "default": None}},
    },
}
BASELINES = {"substructure": "report-cnn4", "lensfinding": "report-cnn3"}


def run_demo(out: Path, *, scale: str = "small", seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into `out`; returns the comparison report. Finished steps are reused when run again."""
    if scale not in SCALES:
        raise InputError(f"--scale {scale!r}: unknown demo scale; expected one of {', '.join(SCALES)}")
    # Imported here, after the arguments are checked: torch, lightning and the simulator take seconds to load.
    from .config import DEFAULT_MODELS, TrainConfig
    from .data.layouts import write_text_atomic
    from .evaluate.evaluate import evaluate
    from .evaluate.predict import predict_catalog
    from .evaluate.report import write_comparison
    from .evaluate.shipped import shipped_run
    from .simulate import simulate_lensfinding, simulate_substructure
    from .train.run import train

    out = Path(out)
    runs: dict[str, Path] = {}
    timings = []
    for task, plan in SCALES[scale].items():
        data = out / "data" / task
        start = time.perf_counter()
        if task == "substructure":
            simulate_substructure(data, preset=plan["preset"], counts=plan["counts"], seed=seed, progress=progress)
        else:
            simulate_lensfinding(data, preset=plan["preset"], counts=plan["counts"], seed=seed, progress=progress)
        timings.append((f"simulate {task}", time.perf_counter() - start))
        for role, model in (("baseline", BASELINES[task]), ("default", DEFAULT_MODELS[task])):
            run_dir = out / "runs" / f"{task}-{role}-{model}"
            start = time.perf_counter()
            config = TrainConfig(task=task, data=str(data), out=str(run_dir), model=model, epochs=plan["epochs"][role],
                                 seed=seed, progress=progress)
            run = train(config, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
            evaluate(run, data, split="test")
            timings.append((f"train + evaluate {task} {model}", time.perf_counter() - start))
            runs[f"{task}: {role} ({model})"] = run_dir
        start = time.perf_counter()
        run_dir = shipped_run(task, data, out / "runs" / f"{task}-shipped-{DEFAULT_MODELS[task]}")
        evaluate(run_dir, data, split="test")
        timings.append((f"evaluate {task} shipped weights", time.perf_counter() - start))
        runs[f"{task}: shipped weights ({DEFAULT_MODELS[task]}, trained at full scale)"] = run_dir
    # the lens finder trained here ranks the demo's test cutouts: the catalogue `lensfinder inspect` opens
    lens_data = out / "data" / "lensfinding"
    predict_catalog([lens_data / "test_lenses", lens_data / "test_nonlenses"], out / "candidates.csv",
                    run=out / "runs" / f"lensfinding-default-{DEFAULT_MODELS['lensfinding']}")
    report = write_comparison(runs, out / "report.html",
                              title=f"lensfinder demo ({scale} scale): report baselines vs lensfinder defaults")
    write_text_atomic(out / "timings.txt", "".join(f"{name}\t{seconds:.1f} s\n" for name, seconds in timings))
    return report
