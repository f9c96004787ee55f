"""Evaluation figures (matplotlib, Agg backend), each written atomically into the run's figures/ folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics import precision_recall_curve, roc_auc, roc_curve  # noqa: E402
from ..train.history import save_figure  # noqa: E402


def plot_roc(labels: np.ndarray, scores: np.ndarray, class_names: list[str], path: Path) -> None:
    """Binary ROC (log FPR axis, where survey purity lives) or one-vs-rest ROC per class plus micro average.
    `scores` (N, K): each class's ranking score (log-odds, as `evaluate.ranking_scores` gives; probabilities work too)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    if len(class_names) == 2:
        fpr, tpr, _ = roc_curve(labels == 1, scores[:, 1])
        ax.plot(fpr, tpr, label=f"{class_names[1]} (AUC {roc_auc(labels == 1, scores[:, 1]):.4f})")
        ax.set_xscale("symlog", linthresh=1e-3)
    else:
        for c, name in enumerate(class_names):
            fpr, tpr, _ = roc_curve(labels == c, scores[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels == c, scores[:, c]):.4f})")
        onehot = np.eye(len(class_names), dtype=bool)[labels]
        fpr, tpr, _ = roc_curve(onehot.ravel(), scores.ravel())
        ax.plot(fpr, tpr, "k--", lw=1, label=f"micro (AUC {roc_auc(onehot.ravel(), scores.ravel()):.4f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_pr(labels: np.ndarray, scores: np.ndarray, ap: float, path: Path) -> None:
    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.step(recall, precision, where="post", label=f"AP {ap:.4f}")
    ax.set_xlabel("recall (completeness)")
    ax.set_ylabel("precision (purity at the test set's prevalence)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    save_figure(fig, path)


def plot_reliability(rel: dict, path: Path, *, binary: bool) -> None:
    edges = np.asarray(rel["edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, label="perfect calibration")
    observed = np.asarray(rel["observed"], dtype=float)
    ax.bar(centres, np.nan_to_num(observed), width=edges[1] - edges[0], alpha=0.6, edgecolor="k",
           label=f"observed (ECE {rel['ece']:.4f})")
    ax.set_xlabel("predicted lens probability" if binary else "confidence (top class)")
    ax.set_ylabel("fraction of lenses" if binary else "accuracy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _display(image: np.ndarray) -> np.ndarray:
    """An image for the eye: single band as is, three bands as an asinh-stretched RGB (i, r, g)."""
    if image.shape[0] == 1:
        return image[0]
    rgb = np.stack([image[2], image[1], image[0]], axis=-1) if image.shape[0] >= 3 else np.moveaxis(image, 0, -1)[..., :1]
    scale = np.percentile(np.abs(rgb), 99.5) or 1.0
    return np.clip(np.arcsinh(rgb / (0.05 * scale)) / np.arcsinh(20.0), 0, 1)


def plot_samples(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, *,
                 probs: np.ndarray | None = None, per_class: int = 4, seed: int = 0) -> None:
    """A grid, one row per true class; with `probs`, titled by predicted class and confidence (report Figs. 1, 5, 6, 10)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(2.0 * per_class, 2.1 * len(class_names)), squeeze=False)
    for c, name in enumerate(class_names):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for j, ax in enumerate(axes[c]):
            ax.axis("off")
            if j >= len(chosen):
                continue
            i = chosen[j]
            ax.imshow(_display(np.asarray(images[i])), cmap="inferno", origin="lower")
            if probs is None:
                ax.set_title(name, fontsize=8)
            else:
                guess = int(probs[i].argmax())
                colour = "green" if guess == c else "red"
                ax.set_title(f"true {name}\npred {class_names[guess]} {probs[i, guess]:.2f}", fontsize=7, color=colour)
    fig.tight_layout()
    save_figure(fig, path)
