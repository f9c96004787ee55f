"""Substructure at 150 x 150 (the noisy DeepLense sets): per-class AUC, accuracy and learning curves of the runs
trained on the Common-Test-I-like preset and on deeplense-model-i, scored on their validation split and on
independent test sets of the same physics (other seeds, never trained on or used for model selection).

Data (counts per class; `--test 0` gives the Common Test I layout, train/ and val/ only):
    lensfinder simulate substructure --preset deeplense-common-test-i --train 10000 --val 2500 --test 0 --out data/ct1
    lensfinder simulate substructure --preset deeplense-common-test-i --train 0 --val 0 --test 2500 --seed 1 --out data/ct1-seed1
    lensfinder simulate substructure --preset deeplense-model-i --train 10000 --val 1000 --test 0 --seed 2 --out data/mi-seed2
    lensfinder simulate substructure --preset deeplense-model-i --train 0 --val 0 --test 2500 --seed 1 --out data/mi-seed1
Runs (one core: OMP_NUM_THREADS=1), e.g.
    lensfinder train --task substructure --data data/ct1 --model resnet-pool-s --epochs 5 --out runs/substructure150/ct1-resnet-pool-s
    lensfinder train --task substructure --data data/ct1 --model resnet-pool-s --epochs 20 --out runs/substructure150/ct1-resnet-pool-s-e20

    python benchmarks/substructure150.py                 # score every run that exists, table + JSON
    python benchmarks/substructure150.py --train         # train the missing runs first (one at a time)

Writes benchmarks/results/<name>.json (default "substructure150") with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from lensfinder.config import TrainConfig  # noqa: E402
from lensfinder.evaluate.evaluate import evaluate  # noqa: E402
from lensfinder.train.run import Run, load_model, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RUNS = ROOT / "runs" / "substructure150"


@dataclass(frozen=True)
class Entry:
    """A run trained on `train_data` and scored on each (label, data folder, split) of `scores`."""

    name: str
    preset: str
    model: str
    epochs: int
    train_data: str
    scores: tuple[tuple[str, str, str], ...]
    overrides: tuple[tuple[str, object], ...] = ()


ENTRIES = (
    Entry("ct1-resnet-pool-s", "deeplense-common-test-i", "resnet-pool-s", 5, "ct1",
          (("val", "ct1", "val"), ("test seed 1", "ct1-seed1", "test"), ("model-i test seed 1", "mi-seed1", "test"))),
    # The same recipe, 20 epochs, one torch thread (lensfinder train ... --epochs 20): the shipped 150 px weights
    Entry("ct1-resnet-pool-s-e20", "deeplense-common-test-i", "resnet-pool-s", 20, "ct1",
          (("val", "ct1", "val"), ("test seed 1", "ct1-seed1", "test"), ("model-i test seed 1", "mi-seed1", "test"))),
    Entry("mi-resnet-pool-s", "deeplense-model-i", "resnet-pool-s", 5, "mi-seed2",
          (("val", "mi-seed2", "val"), ("test seed 1", "mi-seed1", "test"))),
)


def train_entry(entry: Entry, run_dir: Path) -> None:
    config = TrainConfig(task="substructure", data=str(DATA / entry.train_data), out=str(run_dir), model=entry.model,
                         epochs=entry.epochs, progress=False, **dict(entry.overrides))
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    start = time.perf_counter()
    train(config, resume=resume)
    info = {"seconds": time.perf_counter() - start, "resumed": resume, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    (run_dir / "train_time.json").write_text(json.dumps(info, indent=1))


def learning_curve(run_dir: Path, n_train: int) -> list[dict]:
    """Validation macro AUC after each epoch against the training images seen so far (history.csv)."""
    from lensfinder.train.history import read_history

    return [{"epoch": int(r["epoch"]), "train_images_seen": int(r["epoch"]) * n_train,
             "val_auc": float(r["val/auc"]) if r.get("val/auc") else None}
            for r in read_history(run_dir / "history.csv")]


def score_entry(entry: Entry, run_dir: Path) -> dict:
    module = load_model(run_dir)
    timing = json.loads((run_dir / "train_time.json").read_text()) if (run_dir / "train_time.json").is_file() else {}
    n_train = sum(1 for _ in (DATA / entry.train_data / "train").glob("*/*.npy"))
    row = {"entry": entry.name, "preset": entry.preset, "model": module.hparams.model_name,
           "params": int(sum(p.numel() for p in module.model.parameters())), "epochs": Run(run_dir).config.epochs,
           "train_images": n_train, "train_seconds": timing.get("seconds"),
           "train_torch_threads": timing.get("torch_threads"), "run": str(run_dir), "scores": {},
           "learning_curve": learning_curve(run_dir, n_train)}
    for label, data, split in entry.scores:
        if not (DATA / data).is_dir():
            continue
        result = evaluate(Run(run_dir), DATA / data, split=split)
        row["scores"][label] = {"data": f"data/{data}", "split": split, "role": result.get("role", split),
                                "n": result["n"], "tta": result["tta"], "auc_macro": result["auc_macro"],
                                "auc_per_class": result["auc_per_class"], "accuracy": result["accuracy"],
                                "ece": result["ece"]}
    return row


def table(rows: list[dict]) -> str:
    head = ["run", "preset", "model", "epochs", "train images", "train min", "scored on", "n", "macro AUC",
            "AUC no / sphere / vort", "accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        for label, s in r["scores"].items():
            per_class = " / ".join(f"{v:.4f}" for v in s["auc_per_class"].values())
            lines.append("| " + " | ".join([r["entry"], r["preset"], r["model"], str(r["epochs"]), str(r["train_images"]),
                                             minutes, f"{label} ({s['role']})", str(s["n"]), f"{s['auc_macro']:.4f}",
                                             per_class, f"{s['accuracy']:.4f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the runs that are missing (one at a time)")
    parser.add_argument("--only", default=None, help="comma-separated entry names")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--run", action="append", default=[], metavar="ENTRY=PATH",
                        help="score this run folder for an entry instead of RUNS/ENTRY")
    parser.add_argument("--name", default="substructure150")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else None
    given = dict(item.split("=", 1) for item in args.run)
    rows = []
    for entry in ENTRIES:
        if chosen and entry.name not in chosen:
            continue
        run_dir = Path(given.get(entry.name, args.runs / entry.name))
        if args.train and not (run_dir / "model.safetensors").is_file():
            train_entry(entry, run_dir)
        if not (run_dir / "model.safetensors").is_file():
            print(f"{entry.name}: no run at {run_dir}; skipped (pass --train, or --run {entry.name}=PATH)")
            continue
        rows.append(score_entry(entry, run_dir))
    print(table(rows))
    for r in rows:
        curve = ", ".join(f"{p['train_images_seen'] // 1000}k: {p['val_auc']:.4f}" for p in r["learning_curve"]
                          if p["val_auc"] is not None)
        print(f"{r['entry']} learning curve (training images seen: validation macro AUC): {curve}")
    path = write_result(args.name, {"rows": rows, "table": table(rows)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
