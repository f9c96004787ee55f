"""`evaluate(run, data) -> metrics`: scores a split, writes metrics.json, figures/ and report.html into the run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..data.cache import open_packed, pack
from ..data.layouts import SPLIT_ROLES, atomic_write, discover, evaluation_listing, write_text_atomic
from ..train.calibrate import choose_survey_thresholds
from ..train.run import Run, load_model
from ..validation import InputError, check_channels
from . import plots
from .inference import predict_logits_array, softmax
from .report import write_report

# Einstein-radius and arc-S/N bins for the lens-finding breakdown (arcsec; S/N of the lensed light, best band).
THETA_E_BINS = (0.5, 0.8, 1.2, 1.8, 2.5)
# S/N is summed over the arc, so lsst-gri lenses (sources i = 21-25.5) span ~20 to a few thousand.
ARC_SNR_BINS = (0.0, 50.0, 100.0, 200.0, 500.0, 1000.0, np.inf)
SURVEY_PREVALENCE = M.SURVEY_PREVALENCE


def evaluate(run: Run | Path, data: Path, *, split: str = "test", tta: bool | None = None, batch_size: int = 256,
             device: str = "auto") -> dict:
    """Score one split. Ranking metrics (AUCs, AP, TPR0/TPR10, TPR at FPR, the breakdown, ROC/PR figures) use the
    uncalibrated float64 log-odds of each class, which cannot saturate and which calibration cannot reorder;
    accuracy, the classification report and calibration use the calibrated probabilities. Lens-finding thresholds
    come from the run's thresholds.json (chosen on `val` when it was trained) and are applied to this split."""
    run = run if isinstance(run, Run) else Run(Path(run))
    module = load_model(run.path)
    listing = _split_listing(run, Path(data), split)
    if listing.class_names != list(module.hparams.class_names):
        raise InputError(f"{data}: classes {listing.class_names} differ from the model's {module.hparams.class_names}")
    labels = listing.labels
    missing = [c for i, c in enumerate(listing.class_names) if not np.any(labels == i)]
    if missing:
        raise InputError(f"{data} ({split} split): no images of class {', '.join(missing)}; ranking metrics need "
                         f"every class; evaluate a split that holds them all")
    images = _images(run, listing, module, Path(data), split)
    raw = predict_logits_array(module, images, batch_size=batch_size, tta=tta, device=device, calibrated=False)
    logits = module.calibrate(torch.from_numpy(raw)).numpy()
    probs = softmax(logits)
    ranking = ranking_scores(raw)
    result = compute_metrics(labels, probs, listing.class_names, scores=ranking)
    binary = len(listing.class_names) == 2
    score = M.log_odds(logits, positive=1) if binary else M.log_odds(logits)
    use_tta = bool(module.hparams.tta if tta is None else tta)
    if binary and module.hparams.get("calibration"):
        # Calibrated at the training prevalence; also judged at this split's own lens fraction.
        shifted = softmax(module.calibrate(torch.from_numpy(raw), prevalence=float(labels.mean())).numpy())
        result["calibration_at_split_prevalence"] = M.reliability(labels, shifted)
        result["ece_at_split_prevalence"] = result["calibration_at_split_prevalence"]["ece"]
    result.update(split=split, role=SPLIT_ROLES.get(split, split), n=int(len(labels)), tta=use_tta,
                  model=module.hparams.model_name, data=str(data),
                  ranking_score="uncalibrated log-odds per class (float64)")

    figures = run.path / "figures"
    plots.plot_roc(labels, ranking, listing.class_names, figures / f"roc_{split}.png")
    plots.plot_confusion(np.asarray(result["confusion_matrix"]), listing.class_names, figures / f"confusion_{split}.png")
    plots.plot_reliability(result["calibration"], figures / f"reliability_{split}.png", binary=binary)
    plots.plot_samples(images, labels, listing.class_names, figures / "samples.png")
    plots.plot_samples(images, labels, listing.class_names, figures / f"predictions_{split}.png", probs=probs)
    if binary:
        plots.plot_pr(labels, ranking[:, 1], result["average_precision"], figures / f"pr_{split}.png")
        result["breakdown"] = _breakdown(Path(data), listing, ranking[:, 1])
        record = _threshold_record(run, module, Path(data), tta=tta, batch_size=batch_size, device=device)
        if record is None:
            result["thresholds"] = None
            result["thresholds_note"] = (f"{data} has no validation split to choose thresholds on; none are reported "
                                         f"(a cut chosen on the split it is judged on flatters itself)")
        else:
            result["thresholds"] = apply_thresholds(record, labels, score, split)
            result["thresholds_chosen_on"] = record["chosen_on"]
    _write_predictions(run.path / f"predictions_{split}.csv", listing, probs, score)

    all_metrics = json.loads((run.path / "metrics.json").read_text()) if (run.path / "metrics.json").exists() else {}
    all_metrics[split] = result
    write_text_atomic(run.path / "metrics.json", json.dumps(all_metrics, indent=1, default=_json_default))
    write_report(run.path)
    return result


def ranking_scores(log_probs: np.ndarray) -> np.ndarray:
    """(N, K) float64 ranking scores: per class, the log-odds of the uncalibrated probability (`metrics.log_odds`).
    Increasing in that class's probability, so every AUC equals the probability's, but without the ties where
    float probabilities round to 1."""
    return np.stack([M.log_odds(log_probs, positive=c) for c in range(log_probs.shape[1])], axis=1)


def apply_thresholds(record: dict, labels: np.ndarray, score: np.ndarray, split: str) -> dict:
    """Each threshold of a thresholds.json record: its goal, what it did where it was chosen, and on `split`."""
    out = {}
    for name, chosen in record["thresholds"].items():
        goal = {k: chosen.get(k) for k in ("target_purity", "prevalence", "max_false_per_million")}
        at_choice = {k: chosen.get(k) for k in ("completeness", "false_per_million", "purity", "fpr_resolution")}
        here = M.operating_point(labels == 1, score, chosen["threshold"], prevalence=chosen.get("prevalence") or SURVEY_PREVALENCE)
        out[name] = {"threshold": chosen["threshold"], "goal": goal, record["chosen_on"]: at_choice, split: here}
    return out


def _threshold_record(run: Run, module, data: Path, *, tta, batch_size: int, device: str) -> dict | None:
    """The run's thresholds.json, as training wrote it (chosen on `val`). A run without one (trained before
    thresholds were chosen at training time, or shipped weights) gets one chosen now on the validation split of
    `data`, written once; None when `data` has no validation split."""
    path = run.path / "thresholds.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if "chosen_on" in record:
            return record
    try:
        listing = _split_listing(run, data, "val")
    except InputError:
        return None
    if len(set(listing.labels.tolist())) < 2:
        return None
    raw = predict_logits_array(module, _images(run, listing, module, data, "val"), batch_size=batch_size, tta=tta,
                               device=device, calibrated=False)
    score = M.log_odds(module.calibrate(torch.from_numpy(raw)).numpy(), positive=1)
    record = choose_survey_thresholds(listing.labels, score, data=str(data), split="val",
                                      tta=bool(module.hparams.tta if tta is None else tta))
    write_text_atomic(path, json.dumps(record, indent=1))
    return record


def _images(run: Run, listing, module, data: Path, split: str) -> np.ndarray:
    config = run.config
    images = open_packed(pack(listing, cache_dir=Path(config.cache_dir) if config.cache_dir else None,
                              allow_pickle=bool(config.allow_pickle)))
    check_channels(images.shape[1:], expected_channels=module.hparams.in_channels,
                   expected_size=module.hparams.image_size, source=f"{data} ({split} split)")
    return images


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _split_listing(run: Run, data: Path, split: str):
    config = run.config
    return evaluation_listing(discover(data, config.task), split, record=run.path / "split.json",
                              val_fraction=config.val_fraction, seed=config.seed)


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str], *,
                    scores: np.ndarray | None = None) -> dict:
    """Accuracy, classification report, confusion matrix and calibration from the (calibrated) probabilities;
    ranking metrics from `scores` (N, K), per-class ranking scores such as `ranking_scores` gives (float64
    log-odds that do not saturate). Without `scores` the probabilities rank, ties at 1.0 included."""
    scores = np.asarray(probs if scores is None else scores, dtype=np.float64)
    predicted = probs.argmax(1)
    result = {
        "classes": list(class_names),
        "accuracy": float((predicted == labels).mean()),
        "classification_report": M.classification_report(labels, predicted, class_names),
        "confusion_matrix": M.confusion_matrix(labels, predicted, len(class_names)).tolist(),
        "calibration": M.reliability(labels, probs),
    }
    result["ece"] = result["calibration"]["ece"]
    if len(class_names) == 2:
        positive, score = labels == 1, scores[:, 1]
        result.update({
            "auc": M.roc_auc(positive, score),
            "average_precision": M.average_precision(positive, score),
            "tpr_at_fpr_1e-2": M.tpr_at_fpr(positive, score, 1e-2),
            "tpr_at_fpr_1e-3": M.tpr_at_fpr(positive, score, 1e-3),
            "tpr0": M.tpr_before_false_positives(positive, score, 1),
            "tpr10": M.tpr_before_false_positives(positive, score, 10),
        })
    else:
        aucs = M.roc_auc_ovr(labels, scores)
        result.update(auc=aucs["macro"], auc_macro=aucs["macro"], auc_weighted=aucs["weighted"], auc_micro=aucs["micro"],
                      auc_per_class=dict(zip(class_names, aucs["per_class"])))
    return result


def _breakdown(data: Path, listing, scores: np.ndarray) -> dict:
    """Recall of lenses per Einstein-radius and arc-S/N bin, at the TPR10 and FPR=1e-2 operating points, and the
    share of 1 - AUC that each bin's lenses carry (a few faint lenses ranked among the non-lenses cost the most).

    Needs the simulator's manifest.csv (columns path, theta_e_arcsec, arc_snr); absent for other data.
    """
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    keys = [Path(os.path.relpath(p, listing.root)).as_posix() for p in listing.paths]
    lens = listing.labels == 1
    negatives = np.sort(scores[~lens])[::-1]
    cuts = {"tpr10": negatives[min(9, len(negatives) - 1)],
            "fpr_1e-2": negatives[min(int(1e-2 * len(negatives)), len(negatives) - 1)]}
    losses = np.zeros(len(scores))
    losses[lens] = M.ranking_losses(lens, scores)
    total_loss = losses.sum()
    out = {}
    for column, edges in (("theta_e_arcsec", THETA_E_BINS), ("arc_snr", ARC_SNR_BINS)):
        values = np.array([float(rows[k][column]) if k in rows and rows[k].get(column) not in (None, "") else np.nan for k in keys])
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            members = lens & (values >= lo) & (values < hi)
            entry = {"lo": lo, "hi": hi if np.isfinite(hi) else None, "n_lenses": int(members.sum())}
            for name, cut in cuts.items():
                entry[f"recall_{name}"] = float((scores[members] > cut).mean()) if members.any() else None
            entry["auc_loss_share"] = float(losses[members].sum() / total_loss) if total_loss > 0 else None
            bins.append(entry)
        out[column] = bins
    return out


def _write_predictions(path: Path, listing, probs: np.ndarray, score: np.ndarray) -> None:
    """path, label, score (float64 log-odds at full precision: of the lens for lens finding, of the predicted
    class otherwise), then the calibrated probabilities (6 digits)."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "score", *[f"p_{c}" for c in listing.class_names]])
        for p, y, s, row in zip(listing.paths, listing.labels, score, probs):
            writer.writerow([Path(os.path.relpath(p, listing.root)).as_posix(), listing.class_names[y], repr(float(s)),
                             *[f"{v:.6g}" for v in row]])
