"""Robustness of the lens finder: does the top of its ranking survive look-alikes and surveys it never saw?

Two kinds of row, one table (AUC, TPR0, TPR10 on the score that never saturates, and which families fill
the top of the false positives):

* **leave-one-group-out**, at a reduced scale that fits a 2-core CPU: the same number of training images and
  epochs for every row, drawn from one simulated pool (its manifest says each object's family). The
  reference row trains on every family; each other row trains without one group of families (every object
  of the group removed, lenses included for artefacts) and is tested on the full population, held-out
  group included. A group is a superset of single families, so it bounds what one unseen family costs.
* **cross-population / cross-survey**: a model (the shipped one by default) scored on test sets it was
  never trained on: lensfinder's previous population (kept as a fixed reference set), des-gri, and
  lsst-gri-poor (20 % worse seeing, one magnitude shallower).

    python benchmarks/robustness.py loo --pool data/lsst-gri-v2-100k --test data/robust-test \\
        --lenses 6000 --nonlenses 10000 --epochs 6 --threads 1
    python benchmarks/robustness.py cross --model src/lensfinder/weights/lensfinding.safetensors \\
        --set v1-reference=data/ref-v1-published-test --set des-gri=data/robust-des ...
    python benchmarks/robustness.py table          # merge the saved rows into results/robustness.{json,md}

Test sets: ``lensfinder simulate lensfinding --preset P --seed 7 --train-lenses 0 --train-nonlenses 0
--test-lenses 1000 --test-nonlenses 20000 --workers 2 --out DIR``. Rows are saved one per file under
runs/robustness/, so they can be made by separate jobs and merged by ``table``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import RESULTS_DIR, write_result  # noqa: E402

from lensfinder import metrics as M  # noqa: E402
from lensfinder.data.layouts import write_text_atomic  # noqa: E402
from lensfinder.train.run import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "runs" / "robustness"
# Groups of look-alike families left out together (names as in presets/_lensfinding.yaml).
GROUPS = {
    "rings": ["resonance_ring", "collisional_ring", "polar_ring"],
    "arcs-and-shells": ["spiral_arms", "shells", "tidal_arc", "tidal_stream"],
    "companions": ["merger", "blue_companion", "quad_like", "compact_group"],
    "disks-and-clumps": ["edge_on_dust", "chain", "clumpy"],
    "artefacts": ["cosmic_ray", "satellite_trail", "bright_star", "bad_pixels", "sky_residual"],
}
TOP_FALSE = 50  # how many of the highest-scored non-lenses are broken down by family


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _families(row: dict) -> set[str]:
    """The look-alike families present in one object (its confuser family and its artefacts)."""
    out = {row["confuser_kind"]} if row.get("confuser_kind") else set()
    return out | set(filter(None, row.get("artefact_kinds", "").split(";")))


def make_subset(pool: Path, out: Path, *, lenses: int, nonlenses: int, exclude: set[str], seed: int) -> Path:
    """A training layout of symbolic links into `pool`'s training split: `lenses` and `nonlenses` objects
    drawn at random among those that show none of the `exclude` families."""
    rows = [r for r in _manifest(pool) if r["split"] == "train" and not (_families(r) & exclude)]
    rng = random.Random(seed)
    picked = []
    for label, n in (("lens", lenses), ("nonlens", nonlenses)):
        members = [r for r in rows if r["label"] == label]
        if len(members) < n:
            raise SystemExit(f"{pool}: only {len(members)} training {label}es without {sorted(exclude)}; asked for {n}")
        picked += rng.sample(members, n)
    for r in picked:
        link = out / r["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((pool / r["path"]).resolve())
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(picked[0]))
        writer.writeheader()
        writer.writerows(picked)
    return out


@torch.no_grad()
def lens_scores(model_path: Path, test: Path, *, tta: bool = True, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Labels, float64 lens log-odds (calibrated; averaged over the 8 D4 views with `tta`, as the shipped model
    predicts) and manifest rows of `test`'s test split."""
    module = load_model(model_path).for_inference()
    positive = list(module.hparams.class_names).index("lens")
    rows = [r for r in _manifest(test) if r["split"] == "test"]
    scores = []
    for i in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.stack([np.load(test / r["path"]) for r in rows[i:i + batch_size]]))
        scores.append(M.log_odds(module.predict_logits(x, tta=tta).numpy(), positive))
    labels = np.array([r["label"] == "lens" for r in rows])
    return labels, np.concatenate(scores), rows


def score(labels: np.ndarray, scores: np.ndarray, rows: list[dict], *, family_of=_families) -> dict:
    """AUC, AP, TPR0, TPR10 and the families of the `TOP_FALSE` highest-scored non-lenses."""
    negatives = np.flatnonzero(~labels)
    top = negatives[np.argsort(-scores[negatives], kind="stable")[:TOP_FALSE]]
    counts: dict[str, int] = {}
    for i in top:
        for fam in family_of(rows[i]) or {"plain " + rows[i]["deflector_type"]}:
            counts[fam] = counts.get(fam, 0) + 1
    return {"n_lenses": int(labels.sum()), "n_nonlenses": int((~labels).sum()),
            "auc": M.roc_auc(labels, scores), "ap": M.average_precision(labels, scores),
            "tpr0": M.tpr_before_false_positives(labels, scores, 1), "tpr10": M.tpr_before_false_positives(labels, scores, 10),
            "top_false_families": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def _in_group(rows: list[dict], families: list[str]) -> np.ndarray:
    """Which objects show any of `families`."""
    return np.array([bool(_families(r) & set(families)) for r in rows])


def group_only(labels: np.ndarray, scores: np.ndarray, rows: list[dict], in_group: np.ndarray) -> dict:
    """`score` of every lens against the non-lenses of one group alone."""
    keep = labels | in_group
    return score(labels[keep], scores[keep], [r for r, k in zip(rows, keep) if k])


def _save_row(name: str, row: dict) -> None:
    ROWS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ROWS / f"{name}.json", json.dumps(row, indent=1, default=float))


def cmd_loo(args) -> None:
    groups = {"reference": []} | {g: GROUPS[g] for g in (args.groups or GROUPS)}
    for group, families in groups.items():
        name = f"loo-{group}"
        if (ROWS / f"{name}.json").is_file():
            print(f"{name}: done already")
            continue
        data = ROOT / "data" / "robustness" / f"train-without-{group}"
        make_subset(args.pool, data, lenses=args.lenses, nonlenses=args.nonlenses, exclude=set(families), seed=args.seed)
        run = ROOT / "runs" / "robustness" / name
        cmd = [sys.executable, "-m", "lensfinder", "train", "--task", "lensfinding", "--data", str(data),
               "--out", str(run), "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-progress"]
        if args.init:
            cmd += ["--init", args.init]
        if args.lr:
            cmd += ["--lr", str(args.lr)]
        if (run / "checkpoints" / "last.ckpt").is_file():
            cmd.append("--resume")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - start
        labels, scores, rows = lens_scores(run / "model.safetensors", args.test, tta=args.tta)
        in_group = _in_group(rows, families)
        row = {"kind": "leave-one-group-out", "name": name, "left_out": group, "families": families,
               "train_lenses": args.lenses, "train_nonlenses": args.nonlenses, "epochs": args.epochs, "init": args.init, "lr": args.lr,
               "train_seconds": seconds, "threads": args.threads, "test": str(args.test), "tta": args.tta,
               **score(labels, scores, rows), "group_only": None,
               "group_nonlenses_in_test": int((in_group & ~labels).sum())}
        if families and in_group.any():  # lenses against the held-out group's non-lenses only
            row["group_only"] = group_only(labels, scores, rows, in_group)
        _save_row(name, row)
        print(f"{name}: AUC {row['auc']:.4f} TPR0 {row['tpr0']:.3f} TPR10 {row['tpr10']:.3f}")


def cmd_cross(args) -> None:
    for spec in args.set:
        label, path = spec.split("=", 1)
        name = f"cross-{args.label}-{label}"
        labels, scores, rows = lens_scores(args.model, Path(path), tta=args.tta)
        row = {"kind": "cross", "name": name, "model": args.label, "model_path": str(args.model), "test_set": label,
               "tta": args.tta,
               "test": path, **score(labels, scores, rows)}
        _save_row(name, row)
        print(f"{name}: AUC {row['auc']:.4f} TPR0 {row['tpr0']:.3f} TPR10 {row['tpr10']:.3f}")


def _fmt(v, d=4):
    return "-" if v is None else f"{v:.{d}f}"


def group_scores(row: dict) -> dict:
    """The reference row's scores on each group's non-lenses alone (with every lens): the in-family numbers a
    held-out row is compared with. Computed once from the reference run's weights and kept in its row file."""
    if "group_only_by_group" not in row:
        run = ROOT / "runs" / "robustness" / row["name"]
        labels, scores, rows = lens_scores(run / "model.safetensors", Path(row["test"]), tta=row["tta"])
        row["group_only_by_group"] = {group: group_only(labels, scores, rows, _in_group(rows, families))
                                      for group, families in GROUPS.items()}
        _save_row(row["name"], row)
    return row["group_only_by_group"]


def cmd_table(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob("*.json"))]
    loo = [r for r in rows if r["kind"] == "leave-one-group-out"]
    ref = next((r for r in loo if r["left_out"] == "reference"), None)
    in_family = group_scores(ref) if ref is not None else {}
    lines = ["| row | train (lenses : non-lenses, epochs) | test (lenses : non-lenses) | AUC | TPR0 | TPR10 | TPR10 - reference "
             "| the held-out group alone: AUC / TPR10, left out (trained on) "
             "| held-out group in the top 50 false positives (reference) | top-50 false positives |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def in_top(row, families):
        return sum(v for k, v in row["top_false_families"].items() if k in families)

    for r in sorted(loo, key=lambda r: r["left_out"] != "reference"):
        delta = None if ref is None or r is ref else r["tpr10"] - ref["tpr10"]
        top = ", ".join(f"{k} {v}" for k, v in list(r["top_false_families"].items())[:4])
        label = "every family (reference)" if r["left_out"] == "reference" else f"without {r['left_out']}"
        held = "-" if not r["families"] else f"{in_top(r, r['families'])} ({in_top(ref, r['families']) if ref else '-'})"
        alone, base = r.get("group_only"), in_family.get(r["left_out"])
        group = "-" if not alone else (f"{_fmt(alone['auc'])} / {_fmt(alone['tpr10'], 3)}"
                                       + (f" ({_fmt(base['auc'])} / {_fmt(base['tpr10'], 3)})" if base else ""))
        lines.append(f"| {label} | {r['train_lenses']} : {r['train_nonlenses']}, {r['epochs']}"
                     f"{', from ' + Path(r['init']).name if r.get('init') else ''} | "
                     f"{Path(r['test']).name} ({r['n_lenses']} : {r['n_nonlenses']}) | {_fmt(r['auc'])} | "
                     f"{_fmt(r['tpr0'], 3)} | {_fmt(r['tpr10'], 3)} | {_fmt(delta, 3)} | {group} | {held} | {top} |")
    for r in [r for r in rows if r["kind"] == "cross"]:
        top = ", ".join(f"{k} {v}" for k, v in list(r["top_false_families"].items())[:4])
        lines.append(f"| {r['model']} on {r['test_set']} | full scale | {Path(r['test']).name} ({r['n_lenses']} : "
                     f"{r['n_nonlenses']}) | {_fmt(r['auc'])} | {_fmt(r['tpr0'], 3)} | {_fmt(r['tpr10'], 3)} | - | - | - | {top} |")
    text = "\n".join(lines)
    print(text)
    path = write_result(args.name, {"rows": rows, "groups": GROUPS, "top_false": TOP_FALSE})
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    loo = sub.add_parser("loo", help="leave-one-group-out rows at a reduced scale")
    loo.add_argument("--pool", type=Path, required=True, help="simulated set whose training split is drawn from")
    loo.add_argument("--test", type=Path, required=True, help="test set with every family")
    loo.add_argument("--lenses", type=int, default=6000)
    loo.add_argument("--nonlenses", type=int, default=10000)
    loo.add_argument("--epochs", type=int, default=6)
    loo.add_argument("--seed", type=int, default=0)
    loo.add_argument("--threads", type=int, default=1)
    loo.add_argument("--groups", nargs="*", choices=list(GROUPS))
    loo.add_argument("--init", default=None, help="start every row from these weights (train --init), e.g. a file "
                     "of the weights shipped before the population was broadened")
    loo.add_argument("--lr", type=float, default=None, help="peak learning rate of every row (train --lr; default: "
                     "the recipe's, a tenth of it with --init)")
    cross = sub.add_parser("cross", help="one model on test sets it never saw")
    cross.add_argument("--model", type=Path, default=ROOT / "src" / "lensfinder" / "weights" / "lensfinding.safetensors")
    cross.add_argument("--label", default="shipped")
    cross.add_argument("--set", action="append", required=True, help="LABEL=DIR, repeatable")
    for p in (loo, cross):
        p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                       help="score with the mean over the 8 D4 views (as predict does by default)")
    table = sub.add_parser("table", help="merge the saved rows into results/<name>.json and .md")
    table.add_argument("--name", default="robustness")
    args = parser.parse_args(argv)
    {"loo": cmd_loo, "cross": cmd_cross, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
