"""Per-epoch training history: the CSV written during training and its figure."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from ..data.layouts import atomic_path, atomic_write

HISTORY_COLUMNS = ("epoch", "lr", "train/loss", "train/acc", "val/loss", "val/acc", "val/auc")


class HistoryCSV(Callback):
    """One row per epoch in run_dir/history.csv, rewritten atomically (survives interruption and resume)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        for key in HISTORY_COLUMNS[2:]:
            value = metrics.get(f"{key}_epoch", metrics.get(key))
            row[key] = f"{float(value):.6g}" if value is not None else ""
        rows = [r for r in read_history(self.path) if int(r["epoch"]) < row["epoch"]] + [row]
        with atomic_write(self.path, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def read_history(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_history(rows: list[dict], path: Path) -> None:
    """Loss and accuracy (and validation AUC when logged) per epoch, like the report's Figures 2 and 7."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in ("train", "val"):
        axes[0].plot(epochs, series(f"{stage}/loss"), marker="o", ms=3, label=f"{stage} loss")
        axes[1].plot(epochs, series(f"{stage}/acc"), marker="o", ms=3, label=f"{stage} accuracy")
    if any(r.get("val/auc") for r in rows):
        axes[1].plot(epochs, series("val/auc"), marker="s", ms=3, label="val AUC (macro)")
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy / AUC")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
