"""Classification metrics in plain NumPy, checked against hand-computed values in the tests.

Survey metrics follow the lens-finding challenge (Metcalf et al. 2019): TPR0 is the fraction of lenses
scored above every non-lens (found before the first false positive); TPR10 the fraction scored above
the tenth-highest non-lens (found before the tenth false positive).
"""

from __future__ import annotations

import numpy as np

from .validation import InputError


def log_odds(logits: np.ndarray, positive: int | None = None) -> np.ndarray:
    """The ranking score of each row of log-space class scores (N, K): float64 log-odds of class
    `positive` (default: the row's predicted class), log p_k - log(1 - p_k), computed from the logits so
    that it never saturates where the probability rounds to 1."""
    logits = np.asarray(logits, dtype=np.float64)
    k = logits.argmax(1) if positive is None else np.full(len(logits), positive)
    rows = np.arange(len(logits))
    others = logits.copy()
    others[rows, k] = -np.inf
    top = others.max(1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(1))  # logsumexp of the other classes
    return logits[rows, k] - rest


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0); a sample counts positive if score >= threshold."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"ranking metrics need both classes; found {int(n_pos)} positives and {int(n_neg)} negatives: "
                         f"score a split that holds both")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, scores[last_of_tie]]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def ranking_losses(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per positive, the fraction of negatives scored above it (ties count half): their mean is 1 - AUC, so
    summing them over a group of positives says how much of the AUC's shortfall that group carries."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise InputError(f"ranking losses need both classes; found {int(labels.sum())} positives and "
                         f"{int((~labels).sum())} negatives")
    negatives = np.sort(scores[~labels])
    below = np.searchsorted(negatives, scores[labels], side="left")
    tied = np.searchsorted(negatives, scores[labels], side="right") - below
    return 1.0 - (below + 0.5 * tied) / len(negatives)


def roc_auc_ovr(labels: np.ndarray, probs: np.ndarray) -> dict:
    """One-vs-rest AUCs: per class, macro (mean), weighted (by support) and micro (all decisions pooled)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    n_classes = probs.shape[1]
    per_class = [roc_auc(labels == c, probs[:, c]) for c in range(n_classes)]
    support = np.bincount(labels, minlength=n_classes)
    onehot = np.eye(n_classes, dtype=bool)[labels]
    return {
        "per_class": per_class,
        "macro": float(np.mean(per_class)),
        "weighted": float(np.average(per_class, weights=support)),
        "micro": roc_auc(onehot.ravel(), probs.ravel()),
    }


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), highest threshold first."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    labels = np.asarray(labels).astype(bool)
    tp = tpr[1:] * labels.sum()
    fp = fpr[1:] * (~labels).sum()
    return tp / (tp + fp), tpr[1:], thresholds[1:]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (no interpolation)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Highest TPR over the operating points whose FPR does not exceed `max_fpr`."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr].max())


def tpr_before_false_positives(labels: np.ndarray, scores: np.ndarray, n_false: int) -> float:
    """Fraction of positives scored strictly above the `n_false`-th highest negative.

    n_false=1 gives TPR0 (no false positive admitted), n_false=10 gives TPR10 (at most nine).
    """
    if n_false < 1:  # 0 would silently index the lowest negative and report nearly every positive as found
        raise ValueError(f"n_false counts false positives from 1 (TPR0 is n_false=1); got {n_false}")
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    negatives = np.sort(scores[~labels])[::-1]
    if len(negatives) < n_false:
        return 1.0
    return float(np.mean(scores[labels] > negatives[n_false - 1]))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(np.asarray(labels) * n_classes + np.asarray(predicted), minlength=n_classes**2).reshape(n_classes, n_classes)


def classification_report(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """Precision, recall, F1 and support per class, accuracy, macro and weighted averages (report Tables 2 and 4)."""
    cm = confusion_matrix(labels, predicted, len(class_names))
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(0))
        recall = np.nan_to_num(tp / support)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    report = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    report["accuracy"] = float(tp.sum() / support.sum())
    for avg, weights in (("macro avg", None), ("weighted avg", support)):
        report[avg] = {
            "precision": float(np.average(precision, weights=weights)),
            "recall": float(np.average(recall, weights=weights)),
            "f1": float(np.average(f1, weights=weights)),
            "support": int(support.sum()),
        }
    return report


def reliability(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 10) -> dict:
    """Reliability diagram data and expected calibration error (ECE).

    Binary tasks use the positive-class probability against the positive fraction; multi-class tasks
    the top-label confidence against accuracy. ECE = sum_b (n_b / N) |observed_b - predicted_b|.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        confidence, outcome = probs[:, 1], (labels == 1).astype(float)
    else:
        confidence, outcome = probs.max(1), (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = np.bincount(which, weights=confidence, minlength=n_bins) / count
        observed = np.bincount(which, weights=outcome, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / len(labels) * np.abs(observed[filled] - predicted[filled])))
    return {"edges": edges.tolist(), "count": count.tolist(), "predicted": np.where(filled, predicted, np.nan).tolist(),
            "observed": np.where(filled, observed, np.nan).tolist(), "ece": ece}


def purity_at_prevalence(tpr: np.ndarray, fpr: np.ndarray, prevalence: float) -> np.ndarray:
    """Expected purity (precision) of a selection when lenses make up `prevalence` of the survey."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(prevalence * tpr / (prevalence * tpr + (1 - prevalence) * fpr), nan=1.0)


SURVEY_PREVALENCE = 1e-3  # about one lens per thousand cutouts in a real survey

# The survey goals a threshold is chosen for (on the validation split), as keyword arguments of choose_threshold.
THRESHOLD_GOALS = {
    "purity_0.5_at_1e-3": dict(target_purity=0.5, prevalence=SURVEY_PREVALENCE),
    "purity_0.9_at_1e-3": dict(target_purity=0.9, prevalence=SURVEY_PREVALENCE),
    "false_per_million_1000": dict(max_false_per_million=1000),
    "false_per_million_100": dict(max_false_per_million=100),
}


def choose_thresholds(labels: np.ndarray, scores: np.ndarray) -> dict:
    """One `choose_threshold` per goal of THRESHOLD_GOALS."""
    return {name: choose_threshold(labels, scores, **goal) for name, goal in THRESHOLD_GOALS.items()}


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float | None, *,
                    prevalence: float = SURVEY_PREVALENCE) -> dict:
    """What a fixed score cut (score >= threshold counts as found, as in `roc_curve`) does on labelled data:
    completeness, false positives per 10^6 non-lenses, and the purity it implies at `prevalence`."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is None:
        return {"completeness": 0.0, "false_per_million": 0.0, "purity": None, "fpr_resolution": 1.0 / max((~labels).sum(), 1)}
    tpr = float(np.mean(scores[labels] >= threshold)) if labels.any() else 0.0
    fpr = float(np.mean(scores[~labels] >= threshold)) if (~labels).any() else 0.0
    purity = float(purity_at_prevalence(np.array([tpr]), np.array([fpr]), prevalence)[0]) if tpr > 0 else None
    return {"completeness": tpr, "false_per_million": fpr * 1e6, "purity": purity, "fpr_resolution": 1.0 / max((~labels).sum(), 1)}


def choose_threshold(labels: np.ndarray, scores: np.ndarray, *, target_purity: float | None = None,
                     prevalence: float = 1e-3, max_false_per_million: float | None = None) -> dict:
    """The lowest score threshold (most lenses kept) meeting a purity target at a survey prevalence, or a
    false-positive budget per 10^6 cutouts. FPR is resolved only to 1/N_negatives: the result says so."""
    if (target_purity is None) == (max_false_per_million is None):
        raise ValueError("give exactly one of target_purity and max_false_per_million")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if target_purity is not None:
        ok = purity_at_prevalence(tpr, fpr, prevalence) >= target_purity
    else:
        ok = fpr * 1e6 <= max_false_per_million
    n_neg = int((~np.asarray(labels).astype(bool)).sum())
    result = {"target_purity": target_purity, "prevalence": prevalence, "max_false_per_million": max_false_per_million,
              "fpr_resolution": 1.0 / n_neg}
    if not ok.any():
        return {**result, "threshold": None, "completeness": 0.0, "false_per_million": 0.0, "purity": None}
    i = np.flatnonzero(ok)[-1]  # thresholds decrease along the curve: the last admissible point keeps most lenses
    return {**result, "threshold": float(thresholds[i]), "completeness": float(tpr[i]), "false_per_million": float(fpr[i] * 1e6),
            "purity": float(purity_at_prevalence(tpr[i : i + 1], fpr[i : i + 1], prevalence)[0])}
