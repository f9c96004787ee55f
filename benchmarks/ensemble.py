"""Ensemble benchmark: score a lens-finding test split with several trained models, then with the mean of their
probabilities, and print one table (AUC, AP, TPR0, TPR10, TPR at FPR 1e-3) comparing the members and the ensemble
on the same objects, with a bootstrap interval for each AUC.

    python benchmarks/ensemble.py --data data/lsst-gri shipped runs/ens/resnet-s-seed1 [--name ensemble_lensfinding]

The committed results: the second member is `lensfinder train --task lensfinding --data data/lsst-gri-80k --seed 1
--out runs/ens/resnet-s-seed1` (data as in quality.py); ensemble_lensfinding_seed7 scores an independent set,
`lensfinder simulate lensfinding --preset lsst-gri --seed 7 --train-lenses 0 --train-nonlenses 0 --test-lenses 1000
--test-nonlenses 20000 --out data/lsst-gri-seed7`.

A member is a run folder (or its model.safetensors) or `shipped` for the weights inside the package. Each member
scores with its own normalisation and test-time averaging, as `lensfinder evaluate` does; full float precision
is kept (the predictions CSV rounds to 6 digits, which ties the top lenses). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from lensfinder import metrics as M  # noqa: E402
from lensfinder.data.cache import open_packed, pack  # noqa: E402
from lensfinder.data.layouts import discover  # noqa: E402
from lensfinder.evaluate.evaluate import compute_metrics  # noqa: E402
from lensfinder.evaluate.inference import predict_array  # noqa: E402
from lensfinder.evaluate.predict import shipped_weights  # noqa: E402
from lensfinder.train.run import load_model  # noqa: E402
from lensfinder.validation import InputError  # noqa: E402


def auc_interval(labels: np.ndarray, p_lens: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of the AUC, resampling lenses and non-lenses separately (their counts stay fixed):
    with a few hundred test lenses, the AUC's third decimal is within sampling noise."""
    rng = np.random.default_rng(seed)
    pos, neg = p_lens[labels == 1], p_lens[labels == 0]
    aucs = [M.roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                      np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(resamples)]
    return [float(v) for v in np.percentile(aucs, [2.5, 97.5])]


def scores(labels: np.ndarray, p_lens: np.ndarray) -> dict:
    """The headline numbers exactly as `lensfinder evaluate` computes them, plus the AUC's interval."""
    m = compute_metrics(labels, np.stack([1 - p_lens, p_lens], axis=1), ["nonlens", "lens"])
    return {"auc": m["auc"], "auc_ci95": auc_interval(labels, p_lens), "ap": m["average_precision"],
            "tpr0": m["tpr0"], "tpr10": m["tpr10"], "tpr_at_fpr_1e_3": m["tpr_at_fpr_1e-3"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="run folders, model.safetensors files, or `shipped`")
    parser.add_argument("--data", type=Path, default=Path("data/lsst-gri"), help="lens-finding data set with a test split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="ensemble_lensfinding", help="results name: benchmarks/results/<name>.json")
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        parser.error("an ensemble needs at least two members")
    torch.set_num_threads(args.threads)

    splits = discover(args.data, "lensfinding")
    if "test" not in splits:
        raise InputError(f"{args.data}: no test split (found {', '.join(sorted(splits))})")
    listing = splits["test"]
    images = open_packed(pack(listing))
    labels = (np.asarray(listing.labels) == listing.class_names.index("lens")).astype(int)

    rows, member_probs = [], []
    for member in args.members:
        module = load_model(shipped_weights("lensfinding") if member == "shipped" else Path(member))
        if module.hparams.task != "lensfinding":
            raise InputError(f"{member}: a {module.hparams.task} model, not a lens finder")
        start = time.perf_counter()
        p_lens = predict_array(module, images)[:, list(module.hparams.class_names).index("lens")]
        member_probs.append(p_lens)
        rows.append({"member": member, "model": module.hparams.model_name, "tta": bool(module.hparams.tta),
                     "seconds": time.perf_counter() - start, **scores(labels, p_lens)})
    rows.append({"member": "mean of " + " + ".join(args.members), "model": "ensemble", "tta": None, "seconds": None,
                 **scores(labels, np.mean(member_probs, axis=0))})

    print(f"{args.data} test split: {int(labels.sum())} lenses, {int((1 - labels).sum())} non-lenses\n")
    print("| member | model | AUC | AUC 95 % interval | AP | TPR0 | TPR10 | TPR at FPR 1e-3 |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["auc_ci95"]
        print(f"| {r['member']} | {r['model']} | {r['auc']:.4f} | {low:.4f}-{high:.4f} | {r['ap']:.4f} | {r['tpr0']:.3f} "
              f"| {r['tpr10']:.3f} | {r['tpr_at_fpr_1e_3']:.3f} |")
    path = write_result(args.name, {"data": str(args.data), "n_lenses": int(labels.sum()),
                                    "n_nonlenses": int((1 - labels).sum()), "rows": rows})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
