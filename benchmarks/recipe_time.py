"""How long the default substructure recipe takes end to end on this machine, and what it reaches (issue 14.5).

    lensfinder simulate substructure --preset deeplense-model-iii --train 6000 --val 1000 --test 2500 --out data/model-iii
    python benchmarks/recipe_time.py --data data/model-iii --threads 2

Runs `lensfinder train --task substructure --data DATA` with the recipe's defaults (resnet-pool-s, 12 epochs), then
`lensfinder evaluate` on the test split; prints one table row and writes benchmarks/results/recipe_time_<preset>.json
with the wall times, the test numbers, the load average before and after, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe-time")
    args = parser.parse_args(argv)
    preset = (yaml.safe_load((args.data / "simulation.yaml").read_text()) or {}).get("preset", args.data.name)
    shutil.rmtree(args.out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    lensfinder = [sys.executable, "-m", "lensfinder"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([*lensfinder, "train", "--task", "substructure", "--data", str(args.data), "--out", str(args.out),
                    "--no-progress"], check=True, env=env, capture_output=True)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*lensfinder, "evaluate", "--run", str(args.out), "--data", str(args.data)], check=True, env=env,
                   capture_output=True)
    evaluate_s = time.perf_counter() - start
    metrics = json.loads((args.out / "metrics.json").read_text()).get("test", {})
    config = yaml.safe_load((args.out / "config.yaml").read_text())
    row = {"preset": preset, "model": config["model"], "epochs": config["epochs"], "threads": args.threads,
           "train_minutes": round(train_s / 60, 2), "evaluate_seconds": round(evaluate_s, 1),
           "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
           "test": {k: metrics.get(k) for k in ("auc", "accuracy", "ece")}}
    print("| preset | model | epochs | threads | train min | test macro AUC | accuracy |")
    print(f"| {preset} | {row['model']} | {row['epochs']} | {args.threads} | {row['train_minutes']} | "
          f"{row['test']['auc']} | {row['test']['accuracy']} |")
    print(f"wrote {write_result(f'recipe_time_{preset}', row)}")


if __name__ == "__main__":
    main()
