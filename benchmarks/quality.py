"""Quality benchmark: train (or reuse) each model on simulated data, score the held-out test split, print one table.

    python benchmarks/quality.py                       # train what is missing, evaluate, table + JSON + figures
    python benchmarks/quality.py --only lensfinding/resnet-s --train-only --threads 1   # one training job
    python benchmarks/quality.py --evaluate-only       # the shipped weights only, no training

Data (held-out test splits are simulated with the same seed as their training splits but are other objects):
    lensfinder simulate substructure --preset deeplense-model-iii --train 6000 --val 1000 --test 2500 --out data/model-iii
    lensfinder simulate substructure --preset deeplense-model-i --train 2000 --val 300 --test 500 --seed 11 --out data/model-i
    lensfinder simulate lensfinding --preset lsst-gri --out data/lsst-gri          # the published counts
    lensfinder simulate lensfinding --preset lsst-gri --train-lenses 20000 --train-nonlenses 60000 --workers 2 --out data/lsst-gri-80k
    lensfinder simulate lensfinding --preset lsst-gri --train-lenses 40000 --train-nonlenses 80000 --workers 2 --out data/lsst-gri-120k
    lensfinder simulate lensfinding --preset lsst-gri --train-lenses 80000 --train-nonlenses 120000 --workers 2 --out data/lsst-gri-200k
(the test split of each larger set is the published-count test split, object for object: same seeds, same files.)
Runs go to runs/quality/<task>/<entry>; a run that already holds model.safetensors and train_time.json
is reused, so training jobs can be started separately (in parallel) and the table collected afterwards.
Wall times are measured on the machine the run trained on, and say how many jobs shared its cores.

Writes benchmarks/results/<name>.json (default "quality"), the ROC figures benchmarks/results/roc_<task>[_<name>].png
and benchmarks/results/<name>.md (the tables with links to those figures, for the README).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import RESULTS_DIR, write_result  # noqa: E402

from lensfinder import metrics as M  # noqa: E402
from lensfinder.config import DEFAULT_MODELS, RECIPES, TrainConfig  # noqa: E402
from lensfinder.data.layouts import atomic_path, atomic_write  # noqa: E402
from lensfinder.evaluate.evaluate import evaluate  # noqa: E402
from lensfinder.evaluate.predict import shipped_run, shipped_weights  # noqa: E402
from lensfinder.train.run import Run, load_model, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Simulated data sets by preset (see the module docstring for the commands that make them).
DATASETS = {"deeplense-model-iii": ROOT / "data" / "model-iii", "deeplense-model-i": ROOT / "data" / "model-i",
            "lsst-gri": ROOT / "data" / "lsst-gri", **{f"lsst-gri-{n}": ROOT / "data" / f"lsst-gri-{n}" for n in ("80k", "120k", "200k")}}
MAIN_PRESET = {"substructure": "deeplense-model-iii", "lensfinding": "lsst-gri"}


@dataclass(frozen=True)
class Entry:
    """One row of the table: a model trained with a recipe, optionally with overrides (fewer epochs, no class weights)."""

    task: str
    model: str
    recipe: str
    epochs: int | None = None  # None: the recipe's epochs
    preset: str = ""  # simulated data set; "": the task's main preset
    train_set: str = ""  # a DATASETS key to train on instead (tested on the preset's test split)
    tag: str = ""  # told apart from an entry with the same model and data (e.g. "stream")
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def dataset(self) -> str:
        return self.preset or MAIN_PRESET[self.task]

    @property
    def name(self) -> str:
        name = self.model if self.dataset == MAIN_PRESET[self.task] else f"{self.model}-{self.dataset}"
        name = f"{name}-{self.train_set}" if self.train_set else name
        return f"{name}-{self.tag}" if self.tag else name

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"

    @property
    def recipe_epochs(self) -> int:
        return RECIPES[self.recipe][self.task]["epochs"]


# What the table compares. The report's baselines run the report's recipe unchanged (25 / 20 epochs); an entry
# given fewer epochs than its recipe is marked in the "epochs" column.
ENTRIES = (
    Entry("substructure", "resnet-s", "lensfinder"),
    Entry("substructure", "report-cnn4", "report"),
    Entry("substructure", "resnet-s", "lensfinder", epochs=4, preset="deeplense-model-i"),
    Entry("lensfinding", "resnet-s", "lensfinder"),
    Entry("lensfinding", "resnet-s", "lensfinder", train_set="lsst-gri-80k"),  # the model shipped before 2026-12
    # Equal training images (15 x 108k draws), twice the lenses of the 80k set: a fixed set, then the endless stream
    # (fresh objects every batch; validation on the same set).
    Entry("lensfinding", "resnet-s", "lensfinder", epochs=15, train_set="lsst-gri-120k"),
    Entry("lensfinding", "resnet-s", "lensfinder", epochs=15, train_set="lsst-gri-120k", tag="stream",
          overrides=(("stream", True), ("stream_preset", "lsst-gri"), ("steps_per_epoch", 1688))),
    # Twice the compute of the rows above and 80k lenses (18 epochs of 180k draws).
    Entry("lensfinding", "resnet-s", "lensfinder", epochs=18, train_set="lsst-gri-200k"),
    Entry("lensfinding", "report-cnn3", "report"),
)

def train_entry(entry: Entry, data: Path, runs: Path, *, concurrent_jobs: int) -> Path:
    run_dir = runs / entry.task / entry.name
    if (run_dir / "model.safetensors").is_file() and (run_dir / "train_time.json").is_file():
        return run_dir
    config = TrainConfig(task=entry.task, data=str(data), out=str(run_dir), model=entry.model, recipe=entry.recipe,
                         epochs=entry.epochs, progress=False, **dict(entry.overrides))
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    start = time.perf_counter()
    train(config, resume=resume)
    seconds = time.perf_counter() - start
    info = {"seconds": seconds, "resumed": resume, "torch_threads": torch.get_num_threads(),
            "concurrent_jobs": concurrent_jobs, "cpu_count": os.cpu_count()}
    (run_dir / "train_time.json").write_text(json.dumps(info, indent=1))
    return run_dir


def _read_predictions(run_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with open(run_dir / "predictions_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([classes.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return labels, probs


def _saved_evaluation(run_dir: Path, data: Path) -> dict | None:
    """The run's own test evaluation when it is newer than its weights and was made on the same data."""
    metrics, weights = run_dir / "metrics.json", run_dir / "model.safetensors"
    if not (metrics.is_file() and (run_dir / "predictions_test.csv").is_file()):
        return None
    saved = json.loads(metrics.read_text()).get("test")
    if saved is None or saved.get("data") != str(data) or metrics.stat().st_mtime < weights.stat().st_mtime:
        return None
    return saved


def score_run(run_dir: Path, data: Path, entry: Entry | None, *, reuse: bool = True) -> dict:
    """Evaluate a run on the test split (or reuse its saved evaluation) and reduce it to one table row."""
    result = (_saved_evaluation(run_dir, data) if reuse else None) or evaluate(Run(run_dir), data, split="test")
    module = load_model(run_dir)
    classes = list(module.hparams.class_names)
    labels, probs = _read_predictions(run_dir, classes)
    history = (run_dir / "history.csv").read_text().strip().splitlines() if (run_dir / "history.csv").is_file() else []
    trained_epochs = max(len(history) - 1, 0)
    config = Run(run_dir).config
    timing = json.loads((run_dir / "train_time.json").read_text()) if (run_dir / "train_time.json").is_file() else {}
    row = {
        "task": config.task, "preset": module.hparams.preset, "model": module.hparams.model_name,
        "entry": entry.name if entry else module.hparams.model_name, "recipe": config.recipe,
        "params": int(sum(p.numel() for p in module.model.parameters())),
        "epochs": config.epochs, "epochs_trained": trained_epochs,
        "recipe_epochs": RECIPES[config.recipe][config.task]["epochs"],
        "normalization": config.normalization, "augment": config.augment, "class_weights": config.class_weights,
        "scheduler": config.scheduler, "tta": result["tta"],
        "train_seconds": timing.get("seconds"), "train_concurrent_jobs": timing.get("concurrent_jobs"),
        "train_torch_threads": timing.get("torch_threads"),
        "n_test": result["n"], "accuracy": result["accuracy"], "ece": result["ece"],
        "run": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
    }
    if len(classes) == 2:
        row.update(auc=result["auc"], ap=result["average_precision"], tpr0=result["tpr0"], tpr10=result["tpr10"],
                   tpr_at_fpr_1e_3=result["tpr_at_fpr_1e-3"], tpr_at_fpr_1e_2=result["tpr_at_fpr_1e-2"],
                   breakdown=result.get("breakdown", {}), thresholds=result.get("thresholds", {}))
    else:
        aps = [M.average_precision(labels == c, probs[:, c]) for c in range(len(classes))]
        row.update(auc=result["auc_macro"], auc_per_class=result["auc_per_class"], ap=float(np.mean(aps)),
                   ap_per_class=dict(zip(classes, aps)), tpr0=None, tpr10=None)
    row["_roc"] = (labels, probs, classes)
    return row


def inference_speed(module, *, n: int = 2048, batch_size: int = 512, tta: bool, repeats: int = 3) -> float:
    """Cutouts per second through `predict_proba` (normalisation included) on random inputs, best of `repeats`,
    on the module prepared for scoring as `lensfinder predict` prepares it."""
    h = module.hparams
    x = torch.rand(n, h.in_channels, h.image_size, h.image_size)
    module = module.cpu().for_inference()
    module.predict_proba(x[:batch_size], tta=tta)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            module.predict_proba(x[i : i + batch_size], tta=tta)
        best = min(best, time.perf_counter() - start)
    return n / best


def plot_rocs(task: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task == "lensfinding":
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        for row in rows:
            labels, probs, _ = row["_roc"]
            fpr, tpr, _ = M.roc_curve(labels == 1, probs[:, 1])
            ax.plot(fpr, tpr, label=f"{_label(row)}: AUC {row['auc']:.4f}, TPR10 {row['tpr10']:.2f}")
        ax.set_xscale("log")
        ax.set_xlim(1.0 / max(int((labels == 0).sum()), 1), 1)
        ax.set_title("lens finding, lsst-gri test (1:100)", fontsize=10)
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(alpha=0.3)
    else:
        fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.0), squeeze=False)
        for ax, row in zip(axes[0], rows):
            labels, probs, classes = row["_roc"]
            for c, name in enumerate(classes):
                fpr, tpr, _ = M.roc_curve(labels == c, probs[:, c])
                ax.plot(fpr, tpr, label=f"{name}: AUC {row['auc_per_class'][name]:.4f}")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
            ax.set_title(f"{_label(row)} (macro {row['auc']:.4f})", fontsize=9)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(loc="lower right", fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _label(row: dict) -> str:
    return f"{row['entry']} ({row['epochs']} ep)" if row["epochs"] != row["recipe_epochs"] else row["entry"]


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict]) -> str:
    head = ["task", "preset", "model", "recipe", "params", "epochs", "train min", "AUC", "AUC per class", "AP", "TPR0", "TPR10", "acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        epochs = f"{r['epochs']}" + (f" (report: {r['recipe_epochs']})" if r["recipe"] == "report" and r["epochs"] != r["recipe_epochs"] else "")
        per_class = " / ".join(f"{v:.4f}" for v in r["auc_per_class"].values()) if r.get("auc_per_class") else "-"
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        if r.get("train_concurrent_jobs", 1) and r.get("train_concurrent_jobs", 1) > 1:
            minutes += f" ({r['train_concurrent_jobs']} jobs)"
        lines.append("| " + " | ".join([r["task"], str(r["preset"]), r["entry"], r["recipe"], f"{r['params'] / 1e6:.2f} M", epochs, minutes,
                                         _fmt(r["auc"]), per_class, _fmt(r["ap"]), _fmt(r["tpr0"], 3), _fmt(r["tpr10"], 3),
                                         _fmt(r["accuracy"])]) + " |")
    return "\n".join(lines)


def speed_table(speeds: list[dict]) -> str:
    lines = ["| task | model | input | cutouts/s (no TTA) | cutouts/s (8-fold TTA) | torch threads |", "|---|---|---|---|---|---|"]
    for s in speeds:
        lines.append(f"| {s['task']} | {s['model']} | {s['input']} | {s['per_s']:.0f} | {s['per_s_tta']:.0f} | {s['threads']} |")
    return "\n".join(lines)


def breakdown_table(row: dict) -> str:
    lines = []
    for column, title in (("theta_e_arcsec", "Einstein radius (arcsec)"), ("arc_snr", "arc S/N")):
        bins = row.get("breakdown", {}).get(column, [])
        if not bins:
            continue
        lines += [f"| {title} | lenses | recall at TPR10 cut | recall at FPR 1e-2 | share of 1 - AUC |", "|---|---|---|---|---|"]
        for b in bins:
            hi = "inf" if b["hi"] is None else f"{b['hi']:g}"
            cells = [_fmt(b.get(key), 3) for key in ("recall_tpr10", "recall_fpr_1e-2", "auc_loss_share")]
            lines.append(f"| [{b['lo']:g}, {hi}) | {b['n_lenses']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="substructure,lensfinding", help="comma-separated tasks")
    parser.add_argument("--only", default=None, help="comma-separated entries task/name (e.g. lensfinding/resnet-s)")
    parser.add_argument("--data", action="append", default=[], metavar="PRESET=PATH",
                        help="where a preset's simulated data set lives (default: data/model-iii, data/model-i, data/lsst-gri)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--train-only", action="store_true", help="train the selected entries, do not evaluate")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the shipped weights, train nothing")
    parser.add_argument("--no-train", action="store_true", help="evaluate only entries whose runs exist already")
    parser.add_argument("--re-evaluate", action="store_true", help="evaluate again even when a run holds a newer test evaluation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    parser.add_argument("--concurrent-jobs", type=int, default=1, help="recorded with the wall time: jobs sharing the CPU")
    parser.add_argument("--speed-threads", type=int, default=2, help="torch threads for the inference-speed measurement")
    parser.add_argument("--name", default="quality", help="results name: benchmarks/results/<name>.json")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="where the Markdown tables go (default: benchmarks/results/<name>.md)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    data = dict(DATASETS)
    for item in args.data:
        preset, _, path = item.partition("=")
        if preset not in DATASETS or not path:
            parser.error(f"--data expects PRESET=PATH with PRESET one of {', '.join(DATASETS)}; got {item!r}")
        data[preset] = Path(path)
    rows: list[dict] = []
    if args.evaluate_only:
        for task in tasks:
            main_data = data[MAIN_PRESET[task]]
            row = score_run(shipped_run(task, main_data, args.runs / "shipped" / task), main_data, None, reuse=False)
            row["entry"] = f"shipped ({row['model']})"
            rows.append(row)
    else:
        only = set(args.only.split(",")) if args.only else None
        for entry in ENTRIES:
            if entry.task not in tasks or (only and entry.key not in only):
                continue
            run_dir = args.runs / entry.task / entry.name
            if args.no_train and not (run_dir / "model.safetensors").is_file():
                print(f"skipping {entry.key}: no trained run at {run_dir}", flush=True)
                continue
            if not args.no_train:
                print(f"training {entry.key} ({entry.recipe} recipe, {entry.epochs or entry.recipe_epochs} epochs)", flush=True)
                train_entry(entry, data[entry.train_set or entry.dataset], args.runs, concurrent_jobs=args.concurrent_jobs)
            if not args.train_only:
                rows.append(score_run(run_dir, data[entry.dataset], entry, reuse=not args.re_evaluate))
    if args.train_only:
        return

    torch.set_num_threads(args.speed_threads)
    speeds = []
    for task in tasks:
        module = load_model(shipped_weights(task)) if args.evaluate_only else _default_module(task, rows)
        if module is None:
            continue
        h = module.hparams
        speeds.append({"task": task, "model": h.model_name, "input": f"{h.in_channels}x{h.image_size}x{h.image_size}",
                       "per_s": inference_speed(module, tta=False), "per_s_tta": inference_speed(module, tta=True, n=1024),
                       "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0]})

    figures = []
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task]
        if task_rows:
            suffix = "_shipped" if args.evaluate_only else "" if args.name == "quality" else f"_{args.name}"
            figures.append(RESULTS_DIR / f"roc_{task}{suffix}.png")
            plot_rocs(task, task_rows, figures[-1])
    text = table(rows)
    print(text)
    if speeds:
        print(f"\n{speed_table(speeds)}")
    for row in rows:
        if row["task"] == "lensfinding" and row.get("breakdown"):
            print(f"\n{row['entry']}: lens recall by Einstein radius and arc S/N\n{breakdown_table(row)}")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    path = write_result(args.name, {"rows": clean, "inference": speeds, "evaluate_only": args.evaluate_only,
                                    "data": {preset: str(path) for preset, path in data.items()}})
    print(f"\nresults written to {path}")
    write_markdown(args.markdown or RESULTS_DIR / f"{args.name}.md", rows, speeds, figures)


def _default_module(task: str, rows: list[dict]):
    """The task's default model as trained by the first table entry that uses it."""
    for row in rows:
        if row["task"] == task and row["model"] == DEFAULT_MODELS[task]:
            return load_model(ROOT / row["run"])
    return None


def write_markdown(path: Path, rows: list[dict], speeds: list[dict], figures: list[Path]) -> None:
    parts = ["## Quality on simulated data", "",
             "Held-out simulated test sets (`deeplense-model-iii` 64x64 for substructure, `lsst-gri` at the published "
             "counts, 1:100 at test, for lens finding), produced by `python benchmarks/quality.py` on a 2-core CPU. "
             "\"epochs\" below the recipe's count means the run was shortened to fit the benchmark's time; the report's "
             "baselines were trained with the report's recipe otherwise unchanged.", "", table(rows), ""]
    if speeds:
        parts += ["Inference speed on 2 CPU cores (batch 512, normalisation included, batch norm folded):", "",
                  speed_table(speeds), ""]
    for row in rows:
        if row["task"] == "lensfinding" and row.get("breakdown"):
            parts += [f"Lens recall of `{row['entry']}` by Einstein radius and arc signal-to-noise:", "", breakdown_table(row)]
    parts += [f"![ROC curves]({figure.resolve().relative_to(ROOT)})" for figure in figures] + [""]
    with atomic_write(path) as handle:
        handle.write("\n".join(parts))


if __name__ == "__main__":
    main()
