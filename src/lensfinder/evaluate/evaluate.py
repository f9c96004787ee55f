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
from ..train.calibrate import shift_prevalence
from ..train.run import Run, load_model
from ..validation import InputError, check_channels
from . import plots
from .inference import predict_array
from .report import write_report

# Einstein-radius and arc-S/N bins for the lens-finding breakdown (arcsec; S/N of the lensed light, best band).
THETA_E_BINS = (0.5, 0.8, 1.2, 1.8, 2.5)
# S/N is summed over the arc, so lsst-gri lenses (sources i = 21-25.5) span ~20 to a few thousand.
ARC_SNR_BINS = (0.0, 50.0, 100.0, 200.0, 500.0, 1000.0, np.inf)
SURVEY_PREVALENCE = 1e-3  # about one lens per thousand cutouts in a real survey


def evaluate(run: Run | Path, data: Path, *, split: str = "test", tta: bool | None = None, batch_size: int = 256,
             device: str = "auto") -> dict:
    run = run if isinstance(run, Run) else Run(Path(run))
    config = run.config
    module = load_model(run.path)
    listing = _split_listing(run, Path(data), split)
    if listing.class_names != list(module.hparams.class_names):
        raise InputError(f"{data}: classes {listing.class_names} differ from the model's {module.hparams.class_names}")
    images = open_packed(pack(listing, cache_dir=Path(config.cache_dir) if config.cache_dir else None,
                              allow_pickle=config.allow_pickle))
    check_channels(images.shape[1:], expected_channels=module.hparams.in_channels,
                   expected_size=module.hparams.image_size, source=f"{data} ({split} split)")
    probs = predict_array(module, images, batch_size=batch_size, tta=tta, device=device)
    labels = listing.labels
    result = compute_metrics(labels, probs, listing.class_names)
    calibration = module.hparams.get("calibration")
    if calibration and len(listing.class_names) == 2:
        # Calibrated at the training prevalence; also judged at this split's own lens fraction.
        shifted = shift_prevalence(torch.from_numpy(probs), calibration, float(labels.mean())).numpy()
        result["calibration_at_split_prevalence"] = M.reliability(labels, shifted)
        result["ece_at_split_prevalence"] = result["calibration_at_split_prevalence"]["ece"]
    result.update(split=split, role=SPLIT_ROLES.get(split, split), n=int(len(labels)),
                  tta=bool(module.hparams.tta if tta is None else tta),
                  model=module.hparams.model_name, data=str(data))

    figures = run.path / "figures"
    plots.plot_roc(labels, probs, listing.class_names, figures / f"roc_{split}.png")
    plots.plot_confusion(np.asarray(result["confusion_matrix"]), listing.class_names, figures / f"confusion_{split}.png")
    plots.plot_reliability(result["calibration"], figures / f"reliability_{split}.png", binary=len(listing.class_names) == 2)
    plots.plot_samples(images, labels, listing.class_names, figures / "samples.png")
    plots.plot_samples(images, labels, listing.class_names, figures / f"predictions_{split}.png", probs=probs)
    if len(listing.class_names) == 2:
        plots.plot_pr(labels, probs[:, 1], result["average_precision"], figures / f"pr_{split}.png")
        result["breakdown"] = _breakdown(Path(data), listing, probs[:, 1])
        write_text_atomic(run.path / "thresholds.json", json.dumps(result["thresholds"], indent=1))
    _write_predictions(run.path / f"predictions_{split}.csv", listing, probs)

    all_metrics = json.loads((run.path / "metrics.json").read_text()) if (run.path / "metrics.json").exists() else {}
    all_metrics[split] = result
    write_text_atomic(run.path / "metrics.json", json.dumps(all_metrics, indent=1, default=_json_default))
    write_report(run.path)
    return result


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _split_listing(run: Run, data: Path, split: str):
    config = run.config
    return evaluation_listing(discover(data, config.task), split, record=run.path / "split.json",
                              val_fraction=config.val_fraction, seed=config.seed)


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
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
        positive, scores = labels == 1, probs[:, 1]
        result.update({
            "auc": M.roc_auc(positive, scores),
            "average_precision": M.average_precision(positive, scores),
            "tpr_at_fpr_1e-2": M.tpr_at_fpr(positive, scores, 1e-2),
            "tpr_at_fpr_1e-3": M.tpr_at_fpr(positive, scores, 1e-3),
            "tpr0": M.tpr_before_false_positives(positive, scores, 1),
            "tpr10": M.tpr_before_false_positives(positive, scores, 10),
            "thresholds": {
                "purity_0.5_at_1e-3": M.choose_threshold(positive, scores, target_purity=0.5, prevalence=SURVEY_PREVALENCE),
                "purity_0.9_at_1e-3": M.choose_threshold(positive, scores, target_purity=0.9, prevalence=SURVEY_PREVALENCE),
                "false_per_million_1000": M.choose_threshold(positive, scores, max_false_per_million=1000),
                "false_per_million_100": M.choose_threshold(positive, scores, max_false_per_million=100),
            },
        })
    else:
        aucs = M.roc_auc_ovr(labels, probs)
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


def _write_predictions(path: Path, listing, probs: np.ndarray) -> None:
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *[f"p_{c}" for c in listing.class_names]])
        for p, y, row in zip(listing.paths, listing.labels, probs):
            writer.writerow([Path(os.path.relpath(p, listing.root)).as_posix(), listing.class_names[y], *[f"{v:.6g}" for v in row]])
