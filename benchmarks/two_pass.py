"""Two-pass scoring against averaging everything: the shipped lens finder on lens-finding test sets, scored with one
view, with two passes (one view for all, the 8 D4 views for the best-scored --rescore-top share, at least --rescore-min objects; predict's
default: 1 %, at least 1,000)
and with the 8 views for every cutout. Reports TPR0, TPR10, AUC of each, the overlap of their top-100 and top-K lists
(K: the rows the second pass re-scores) and whether the lenses ranked above the first and the tenth non-lens are the
same; plus the seconds each took. The same comparison for other shares (--shares) is derived from the one-view and
8-view scores (the two-pass scores are those, row by row: checked for the default share against the real call), with
the share a second pass would need to re-score every member of the 8-view top 100.

    lensfinder simulate lensfinding --preset lsst-gri --out data/t2 --train-lenses 10 --train-nonlenses 10
    lensfinder simulate lensfinding --preset lsst-gri --seed 7 --out data/t2-seed7 --train-lenses 10 --train-nonlenses 10
    python benchmarks/two_pass.py --data data/t2 --data data/t2-seed7     # test split: 195 lenses, 19,455 non-lenses

Writes benchmarks/results/two_pass.json (with the machine and the load average).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from lensfinder import metrics as M  # noqa: E402
from lensfinder.data.layouts import discover  # noqa: E402
from lensfinder.evaluate.inference import (DEFAULT_RESCORE_MIN, DEFAULT_RESCORE_TOP,  # noqa: E402
                                           predict_logits_array, rescore_count, top_indices, two_pass_logits_array)
from lensfinder.shipped import shipped_weights  # noqa: E402
from lensfinder.train.run import load_model  # noqa: E402


def load_split(root: Path, scratch: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test split's images (memory-mapped, one file read at a time), labels (1 = lens) and file names."""
    listing = discover(root, "lensfinding")["test"]
    first = np.load(listing.paths[0])
    images = np.lib.format.open_memmap(scratch / f"{root.name}.npy", mode="w+", dtype=np.float32,
                                       shape=(len(listing), *first.shape))
    for i, path in enumerate(listing.paths):
        images[i] = np.load(path)
    images.flush()
    return images, np.asarray(listing.labels), [p.name for p in listing.paths]


def ranking(labels: np.ndarray, score: np.ndarray) -> dict:
    return {"auc": M.roc_auc(labels, score), "tpr0": M.tpr_before_false_positives(labels, score, 1),
            "tpr10": M.tpr_before_false_positives(labels, score, 10)}


def lenses_above(labels: np.ndarray, score: np.ndarray, n_false: int) -> set[int]:
    """The lenses scored above the `n_false`-th best-scored non-lens (those TPR0 (1) and TPR10 (10) count)."""
    negatives = np.sort(score[labels == 0])[::-1]
    return set(np.flatnonzero((labels == 1) & (score > negatives[n_false - 1])).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="lens-finding data root (test split)")
    parser.add_argument("--rescore-top", type=float, default=DEFAULT_RESCORE_TOP)
    parser.add_argument("--rescore-min", type=int, default=DEFAULT_RESCORE_MIN)
    parser.add_argument("--shares", default="0.01,0.02,0.05,0.1", help="other shares to compare (no minimum), derived")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--name", default="two_pass")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    module = load_model(shipped_weights("lensfinding"))
    load_before = os.getloadavg()
    sets = []
    with tempfile.TemporaryDirectory() as scratch:
        for root in args.data:
            images, labels, names = load_split(root, Path(scratch))
            timings, scores = {}, {}
            for mode, tta in (("one view", False), ("all 8 views", True)):
                start = time.perf_counter()
                logits = predict_logits_array(module, images, batch_size=args.batch_size, tta=tta, device="cpu")
                timings[mode] = time.perf_counter() - start
                scores[mode] = M.log_odds(logits, positive=1)
                print(f"{root}: {mode} in {timings[mode]:.0f} s", flush=True)
            start = time.perf_counter()
            logits, views = two_pass_logits_array(module, images, mode="top", share=args.rescore_top,
                                                  batch_size=args.batch_size, device="cpu", positive=1,
                                                  minimum=args.rescore_min)
            timings["two passes"] = time.perf_counter() - start
            scores["two passes"] = M.log_odds(logits, positive=1)
            k = rescore_count(len(labels), args.rescore_top, args.rescore_min)
            chosen = top_indices(scores["one view"], k)
            # the two-pass scores are the one-view scores with the chosen rows' replaced by their 8-view scores
            expected = scores["one view"].copy()
            expected[chosen] = scores["all 8 views"][chosen]
            agree = float(np.max(np.abs(expected - scores["two passes"])))
            assert int((views == 8).sum()) == k and set(np.flatnonzero(views == 8)) == set(chosen.tolist())
            rows = {mode: {**ranking(labels, s), "seconds": round(timings[mode], 1),
                           "cutouts_per_s": round(len(labels) / timings[mode], 1)} for mode, s in scores.items()}
            tops = {mode: top_indices(s, max(k, 100)) for mode, s in scores.items()}
            overlap = {}
            for mode in ("one view", "two passes"):
                reference = tops["all 8 views"]
                overlap[mode] = {
                    "top100": len(set(tops[mode][:100]) & set(reference[:100])) / 100,
                    "top100_same_order": bool(np.array_equal(tops[mode][:100], reference[:100])),
                    f"top{k}": len(set(tops[mode][:k]) & set(reference[:k])) / k,
                    "lenses_above_first_nonlens_same": lenses_above(labels, scores[mode], 1)
                    == lenses_above(labels, scores["all 8 views"], 1),
                    "lenses_above_tenth_nonlens_same": lenses_above(labels, scores[mode], 10)
                    == lenses_above(labels, scores["all 8 views"], 10),
                    "lenses_in_top100": int(labels[tops[mode][:100]].sum()),
                }
            overlap["all 8 views"] = {"lenses_in_top100": int(labels[tops["all 8 views"][:100]].sum())}
            # lenses the 8 views put in their top K that the first pass did not choose for the second
            missed = sorted(set(tops["all 8 views"][:k].tolist()) - set(chosen.tolist()))
            one_rank = np.empty(len(labels), np.int64)
            one_rank[top_indices(scores["one view"], len(labels))] = np.arange(1, len(labels) + 1)
            worst = int(one_rank[tops["all 8 views"][:100]].max())
            derived = {}
            plans = [(float(x), 0) for x in args.shares.split(",")] + [(args.rescore_top, args.rescore_min)]
            for other, minimum in plans:
                kk = rescore_count(len(labels), other, minimum)
                mixed = scores["one view"].copy()
                picked = top_indices(scores["one view"], kk)
                mixed[picked] = scores["all 8 views"][picked]
                top = top_indices(mixed, max(kk, 100))
                reference = tops["all 8 views"] if kk <= len(tops["all 8 views"]) else top_indices(
                    scores["all 8 views"], kk)
                derived[f"{other:g}" + (f", at least {minimum}" if minimum else "")] = {
                                         **ranking(labels, mixed), "rescored": kk,
                                         "top100_overlap": len(set(top[:100]) & set(reference[:100])) / 100,
                                         "topK_overlap": len(set(top[:kk]) & set(reference[:kk])) / kk,
                                         "lenses_in_top100": int(labels[top[:100]].sum()),
                                         "lenses_above_first_nonlens_same": lenses_above(labels, mixed, 1)
                                         == lenses_above(labels, scores["all 8 views"], 1),
                                         "lenses_above_tenth_nonlens_same": lenses_above(labels, mixed, 10)
                                         == lenses_above(labels, scores["all 8 views"], 10)}
            sets.append({"data": str(root), "n": int(len(labels)), "lenses": int(labels.sum()), "rescored": k,
                         "rescore_top": args.rescore_top, "rescore_min": args.rescore_min,
                         "max_abs_two_pass_vs_expected": agree, "modes": rows,
                         "overlap_with_all_8_views": overlap, "shares": derived,
                         "one_view_rank_of_worst_8_view_top100": worst,
                         "share_to_rescore_all_of_8_view_top100": worst / len(labels),
                         "lenses_in_8_view_top_k_not_rescored": [names[i] for i in missed if labels[i] == 1]})
            for mode, row in rows.items():
                print(f"  {mode:12s} AUC {row['auc']:.4f} TPR0 {row['tpr0']:.3f} TPR10 {row['tpr10']:.3f} "
                      f"{row['cutouts_per_s']:8.1f} cutouts/s   {overlap.get(mode, '')}", flush=True)
            for other, row in derived.items():
                print(f"  share {other:18s} K {row['rescored']:5d} top100 overlap {row['top100_overlap']:.2f} topK {row['topK_overlap']:.2f} "
                      f"TPR0 {row['tpr0']:.3f} TPR10 {row['tpr10']:.3f} AUC {row['auc']:.4f}", flush=True)
            print(f"  the 8-view top 100 reaches one-view rank {worst} ({worst / len(labels):.2%})", flush=True)
    payload = {"what": "shipped lens finder (resnet-s, 3x64x64) on lens-finding test splits: one view, two passes "
                       f"(the top {args.rescore_top:g}, at least {args.rescore_min}, re-scored with the 8 D4 views; predict's "
                       "default) and the 8 views "
                       "for all; ranking by the calibrated float64 log-odds (same order as the uncalibrated)",
               "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "torch_threads": torch.get_num_threads(),
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "note": args.note,
               "sets": sets}
    print(f"written to {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
