"""Lens-finding recipe probe: a short training run scored on the validation split (never the test split).

    python benchmarks/recipe_probe.py --sampling weights --steps 800 --tag A
    python benchmarks/recipe_probe.py --sampling balanced --steps 800 --tag B

A plain loop over the packed training split of data/lsst-gri, so recipe choices (class-weighted loss vs
balanced batches, models) can be compared in minutes; prints validation AUC, TPR0 and TPR10 four times
per run. Logs of the runs that chose lensfinder's recipe are in benchmarks/results/recipe_probe/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lensfinder import metrics as M
from lensfinder.data.cache import open_packed, pack
from lensfinder.data.layouts import discover, train_val_listings
from lensfinder.data.normalize import Normalizer
from lensfinder.data.transforms import d4_transform, random_d4
from lensfinder.models import create_model

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "lsst-gri")
    parser.add_argument("--model", default="resnet-s")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--sampling", choices=("weights", "balanced", "plain"), default="balanced",
                        help="weights: shuffled batches, class-weighted CE; balanced: half lenses per batch; plain: neither")
    parser.add_argument("--normalization", default="asinh")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_listing, val_listing = train_val_listings(discover(args.data, "lensfinding"), val_fraction=0.1, seed=0)
    x_train, y_train = open_packed(pack(train_listing)), np.asarray(train_listing.labels)
    x_val, y_val = torch.from_numpy(np.array(open_packed(pack(val_listing)))), np.asarray(val_listing.labels)
    print(f"train {x_train.shape} lens share {y_train.mean():.3f}; val {tuple(x_val.shape)}", flush=True)

    normalize = Normalizer(args.normalization)
    model = create_model(args.model, in_channels=3, num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.2)
    lenses, others = np.flatnonzero(y_train == 1), np.flatnonzero(y_train == 0)
    class_weight = torch.tensor([len(y_train) / (2 * len(others)), len(y_train) / (2 * len(lenses))])

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        if args.sampling == "balanced":
            half = args.batch_size // 2
            index = np.concatenate([rng.choice(lenses, half), rng.choice(others, args.batch_size - half)])
        else:
            index = rng.choice(len(y_train), args.batch_size, replace=False)
        index = np.sort(index)
        return torch.from_numpy(x_train[index]), torch.from_numpy(y_train[index]).long()

    def validate() -> tuple[float, float, float]:
        model.eval()
        scores = []
        with torch.no_grad():
            for i in range(0, len(x_val), 512):
                x = normalize(x_val[i : i + 512])
                scores.append(sum(F.softmax(model(d4_transform(x, k)), 1)[:, 1] for k in range(8)) / 8)
        model.train()
        s = torch.cat(scores).numpy()
        return M.roc_auc(y_val, s), M.tpr_before_false_positives(y_val, s, 1), M.tpr_before_false_positives(y_val, s, 10)

    start = time.time()
    for step in range(1, args.steps + 1):
        x, y = batch()
        loss = F.cross_entropy(model(random_d4(normalize(x))), y, weight=class_weight if args.sampling == "weights" else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % (args.steps // 4) == 0 or step == args.steps:
            auc, tpr0, tpr10 = validate()
            print(f"{args.tag} step {step} loss {loss.item():.3f} val AUC {auc:.4f} TPR0 {tpr0:.3f} TPR10 {tpr10:.3f} "
                  f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
