"""The cross-survey check (issue 16): can a survey's own cutouts teach the lens finder that survey?

A "real" survey is stood in for by lensfinder itself in another preset: des-gri (DES 3-year depth, 0.263"
pixels, seeing 1.12/0.96/0.88" in g/r/i, against the shipped finder's lsst-gri at 0.2" and 0.77/0.73/0.71"). Its
non-lens cutouts are the hosts, as a survey's galaxy cutouts would be. The bring-your-own-survey workflow then
runs as a user would run it:

1. ``lensfinder psf`` builds the PSF from the stars in the host cutouts;
2. ``lensfinder simulate lensfinding --hosts ... --psf ...`` paints 500 lenses onto hosts (+ 2500 hosts as
   non-lenses) for training, and 200 lenses onto held-out hosts (+ 5000 held-out hosts) for testing;
3. rows, each scored on the painted test set and on a des-gri test set rendered natively by the simulator
   (lenses the painting never made, 200 : 5000):
   - the shipped finder as is;
   - fine-tuned from it on the painted training set (``lensfinder train --init shipped``);
   - trained from scratch on the same set with the same epochs (``lensfinder train``).

Every row is scored with one view (no 8-view averaging), the same for all rows; the time each row took on this
CPU is recorded (training wall time; scoring wall time), with the load average (a shared machine: floors).

    nice -n 10 python benchmarks/transfer.py                   # about 12 min at 1 thread
    nice -n 10 python benchmarks/transfer.py --epochs 4        # shorter

Writes benchmarks/results/transfer.json and transfer.md; working data under data/transfer/ and runs/transfer/
(a rerun reuses what is there: simulation and painting resume, finished training runs are kept).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import RESULTS_DIR, write_result  # noqa: E402
from robustness import _families, lens_scores, score  # noqa: E402

from lensfinder.shipped import shipped_weights  # noqa: E402
from lensfinder.simulate.presets import load_preset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SURVEY = "des-gri"
COUNTS = {"train_lenses": 500, "train_nonlenses": 2500, "test_lenses": 200, "test_nonlenses": 5000}
NATIVE_TEST = {"test_lenses": 200, "test_nonlenses": 5000}


def _timed(timings: dict, key: str, record: Path, cmd: list[str], threads: int) -> None:
    """Run a data step (they resume, so a rerun finds them done) and keep the time of the run that did the work in
    `record`, so that a rerun reports that time, not the seconds it took to find the work done."""
    saved = json.loads(record.read_text()) if record.is_file() else {}
    seconds = _run(cmd, threads)
    if key not in saved:
        saved[key] = seconds
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(saved, indent=1))
    timings[key] = saved[key]


def _run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def _lensfinder(*args) -> list[str]:
    return [sys.executable, "-m", "lensfinder", *map(str, args)]


def _manifest(root: Path) -> dict[str, dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of both training rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="peak learning rate of the fine-tuned row (default: train's, a tenth of the recipe's with --init)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "transfer")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "transfer")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work, runs = args.work, args.runs
    timings: dict[str, float] = {}
    total_start = time.perf_counter()

    # the stand-in survey: its non-lens cutouts are the hosts; a native test set of its own lenses
    hosts_set, native = work / f"{SURVEY}-hosts", work / f"{SURVEY}-native-test"
    n_hosts = sum(COUNTS.values())
    steps = work / "timings.json"
    _timed(timings, "simulate_hosts_s", steps, _lensfinder(
        "simulate", "lensfinding", "--preset", SURVEY, "--seed", args.seed, "--train-lenses", 0, "--train-nonlenses",
        n_hosts, "--test-lenses", 0, "--test-nonlenses", 0, "--workers", args.threads, "--out", hosts_set), args.threads)
    _timed(timings, "simulate_native_test_s", steps, _lensfinder(
        "simulate", "lensfinding", "--preset", SURVEY, "--seed", args.seed + 1, "--train-lenses", 0, "--train-nonlenses", 0,
        "--test-lenses", NATIVE_TEST["test_lenses"], "--test-nonlenses", NATIVE_TEST["test_nonlenses"],
        "--workers", args.threads, "--out", native), args.threads)
    hosts = hosts_set / "train_nonlenses"

    # 1. the PSF from the stars in the cutouts; 2. painted training and test sets
    psf_dir = work / "psf"
    _timed(timings, "psf_s", steps, _lensfinder("psf", hosts, "--out", psf_dir), args.threads)
    psf_record = json.loads((psf_dir / "psf.json").read_text())
    painted = work / "painted"
    _timed(timings, "paint_s", steps, _lensfinder(
        "simulate", "lensfinding", "--hosts", hosts, "--preset", SURVEY, "--psf", psf_dir, "--seed", args.seed,
        *[f"--{k.replace('_', '-')}={v}" for k, v in COUNTS.items()], "--workers", args.threads, "--out", painted),
        args.threads)

    # 3. the rows
    models = {"shipped as is": shipped_weights("lensfinding")}
    finetune = ["--init", "shipped"] + (["--lr", args.finetune_lr] if args.finetune_lr else [])
    train_rows = {"fine-tuned from shipped (--init shipped)": finetune, "from scratch": []}
    train_seconds = {"shipped as is": None}
    for label, extra in train_rows.items():
        run = runs / ("finetuned" if extra else "scratch")
        record = run / "train_seconds.json"  # a finished run is kept, with the time it took
        if not record.is_file():
            cmd = _lensfinder("train", "--task", "lensfinding", "--data", painted, "--out", run, "--epochs", args.epochs,
                              "--seed", 0, "--no-progress", *extra)
            if (run / "checkpoints" / "last.ckpt").is_file():
                cmd.append("--resume")
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"seconds": _run(cmd, args.threads), "epochs": args.epochs}))
        train_seconds[label] = json.loads(record.read_text())["seconds"]
        models[label] = run / "model.safetensors"

    host_rows = _manifest(hosts_set)  # the hosts' own families (confuser kind, artefacts) for the false positives

    def host_families(row: dict) -> set[str]:
        host = host_rows.get(row.get("host_id", ""))
        source = host if host is not None else row
        return _families(source) or {"plain " + source.get("deflector_type", "galaxy")}

    results = []
    for label, model in models.items():
        for test_label, test in (("painted test (held-out hosts)", painted), (f"{SURVEY} native test", native)):
            start = time.perf_counter()
            labels, scores, rows = lens_scores(model, test, tta=False)
            seconds = time.perf_counter() - start
            metrics = score(labels, scores, rows, family_of=host_families)
            results.append({"row": label, "test": test_label, "train_seconds": train_seconds[label],
                            "score_seconds": round(seconds, 1), **metrics})
            print(f"{label:42s} {test_label:32s} AUC {metrics['auc']:.4f} TPR0 {metrics['tpr0']:.3f} "
                  f"TPR10 {metrics['tpr10']:.3f}  score {seconds:.0f} s", flush=True)

    lines = ["| row | test set (lenses : non-lenses) | AUC | TPR0 | TPR10 | training time | scoring time |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        train = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        lines.append(f"| {r['row']} | {r['test']} ({r['n_lenses']} : {r['n_nonlenses']}) | {r['auc']:.4f} | "
                     f"{r['tpr0']:.3f} | {r['tpr10']:.3f} | {train} | {r['score_seconds']:.0f} s |")
    text = "\n".join(lines)
    print(text)
    commands = {
        "hosts": f"lensfinder simulate lensfinding --preset {SURVEY} --seed {args.seed} --train-lenses 0 "
                 f"--train-nonlenses {n_hosts} --test-lenses 0 --test-nonlenses 0 --out {hosts_set.relative_to(ROOT)}",
        "native test": f"lensfinder simulate lensfinding --preset {SURVEY} --seed {args.seed + 1} --train-lenses 0 "
                       f"--train-nonlenses 0 --test-lenses {NATIVE_TEST['test_lenses']} --test-nonlenses "
                       f"{NATIVE_TEST['test_nonlenses']} --out {native.relative_to(ROOT)}",
        "psf": f"lensfinder psf {hosts.relative_to(ROOT)} --out {psf_dir.relative_to(ROOT)}",
        "paint": f"lensfinder simulate lensfinding --hosts {hosts.relative_to(ROOT)} --preset {SURVEY} --psf "
                 f"{psf_dir.relative_to(ROOT)} --seed {args.seed} "
                 + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in COUNTS.items()) + f" --out {painted.relative_to(ROOT)}",
        "fine-tuned": f"lensfinder train --task lensfinding --data {painted.relative_to(ROOT)} --init shipped "
                      f"{'--lr ' + str(args.finetune_lr) + ' ' if args.finetune_lr else ''}"
                      f"--epochs {args.epochs} --seed 0 --out {(runs / 'finetuned').relative_to(ROOT)}",
        "scratch": f"lensfinder train --task lensfinding --data {painted.relative_to(ROOT)} --epochs {args.epochs} "
                   f"--seed 0 --out {(runs / 'scratch').relative_to(ROOT)}",
    }
    survey = load_preset(SURVEY, task="lensfinding")
    painted_rows = list(_manifest(painted).values())
    lenses = [r for r in painted_rows if r["label"] == "lens"]

    def percentiles(root: Path) -> dict:
        rows = [r for r in _manifest(root).values() if r["label"] == "lens" and r["split"] == "test"]
        out = {"n": len(rows)}
        for column in ("theta_e_arcsec", "arc_snr", "source_mag_i"):
            out[column] = np.percentile([float(r[column]) for r in rows], [10, 50, 90]).round(3).tolist()
        out["arc_snr_above_20"] = float(np.mean([float(r["arc_snr"]) > 20 for r in rows]))
        return out
    payload = {
        "what": f"the lens finder on a survey it was not trained for ({SURVEY} simulated by lensfinder, its non-lens "
                "cutouts as the survey's galaxies): shipped as is, fine-tuned from shipped on lenses painted onto the "
                "survey's cutouts, and trained from scratch on the same; scored with one view (no TTA)",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "epochs": args.epochs,
        "threads": args.threads, "seed": args.seed, "counts": COUNTS, "native_test": NATIVE_TEST,
        "commands": commands, "timings_s": timings, "train_seconds": train_seconds,
        "psf": {"fwhm_pix": psf_record["fwhm_pix"], "fwhm_arcsec": [f * survey["pixel_scale_arcsec"] for f in psf_record["fwhm_pix"]],
                "stars": len(psf_record["stars"]), "candidates": psf_record["candidates"],
                "preset_seeing_arcsec": [b["seeing_arcsec"] for b in survey["bands"].values()],
                "preset_seeing_scale_range": survey["observing"]["seeing_scale"]},
        "painted_lenses": {"theta_e_arcsec_median": float(np.median([float(r["theta_e_arcsec"]) for r in lenses])),
                           "arc_snr_median": float(np.median([float(r["arc_snr"]) for r in lenses])),
                           "source_mag_i_median": float(np.median([float(r["source_mag_i"]) for r in lenses])),
                           "quasars": sum(r["source_kind"] == "quasar" for r in lenses)},
        "test_lenses_10_50_90_percent": {"painted": percentiles(painted), "native": percentiles(native),
                                         "note": "arc_snr: painted against the host's sky noise, native against the "
                                                 "simulated pixels' full noise"},
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "note": args.note,
        "work_seconds": round(sum(timings.values()) + sum(v for v in train_seconds.values() if v)
                              + sum(r["score_seconds"] for r in results), 1),
        "this_run_seconds": round(time.perf_counter() - total_start, 1), "results": results}
    path = write_result(args.name, payload)
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
