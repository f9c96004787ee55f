"""report.html for a run folder (and side-by-side comparisons of several runs): tables plus the figures."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import yaml

from ..data.layouts import write_text_atomic

HEADLINE = (("accuracy", "accuracy"), ("auc", "AUC (macro for 3 classes)"), ("average_precision", "AP"),
            ("tpr0", "TPR0"), ("tpr10", "TPR10"), ("tpr_at_fpr_1e-2", "TPR @ FPR 1e-2"), ("tpr_at_fpr_1e-3", "TPR @ FPR 1e-3"),
            ("ece", "ECE"), ("ece_at_split_prevalence", "ECE at the split's lens fraction"))

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}img{max-width:48%;margin:4px}")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def run_summary(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    return {"config": config, "metrics": metrics}


def _split_section(split: str, m: dict, figures_rel: str) -> str:
    parts = [f"<h2>{html.escape(split)} split ({m.get('n', '?')} images, TTA {m.get('tta')})</h2>"]
    if m.get("role") == "validation":
        parts.append("<p>Validation numbers: training chose its checkpoint and calibration on this split.</p>")
    parts.append(_table(["metric", "value"], [[label, m[key]] for key, label in HEADLINE if key in m]))
    if "auc_per_class" in m:
        parts.append("<h3>One-vs-rest AUC</h3>" + _table(
            ["class", "AUC"], [[c, v] for c, v in m["auc_per_class"].items()] +
            [["micro", m["auc_micro"]], ["macro", m["auc_macro"]], ["weighted", m["auc_weighted"]]]))
    rep = m["classification_report"]
    rows = [[name, rep[name]["precision"], rep[name]["recall"], rep[name]["f1"], rep[name]["support"]]
            for name in m["classes"] + ["macro avg", "weighted avg"]]
    parts.append("<h3>Classification report</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows)
                 + f"<p>accuracy {rep['accuracy']:.4f}</p>")
    for column, bins in (m.get("breakdown") or {}).items():
        parts.append(f"<h3>Lens recall by {html.escape(column)}</h3>" + _table(
            ["from", "to", "lenses", "recall @ TPR10 cut", "recall @ FPR 1e-2 cut", "share of 1 - AUC"],
            [[b["lo"], "inf" if b["hi"] is None else b["hi"], b["n_lenses"],
              *[b.get(key) for key in ("recall_tpr10", "recall_fpr_1e-2", "auc_loss_share")]] for b in bins]))
    if m.get("thresholds"):
        chosen_on = m.get("thresholds_chosen_on", "val")
        header = ["goal", "threshold (lens log-odds)"]
        splits = [chosen_on] + ([split] if split != chosen_on else [])
        for where in splits:
            header += [f"completeness ({where})", f"false per 10^6 ({where})", f"purity at 1:1000 ({where})"]
        rows = []
        for goal, t in m["thresholds"].items():
            row = [goal, t["threshold"] if t["threshold"] is not None else "none"]
            for where in splits:
                point = t.get(where, {})
                row += [point.get("completeness"), point.get("false_per_million"), point.get("purity")]
            rows.append(row)
        parts.append(f"<h3>Thresholds for a survey: chosen on {html.escape(chosen_on)}, applied to "
                     f"{html.escape(split)}</h3>" + _table(header, rows))
    elif m.get("thresholds_note"):
        parts.append(f"<h3>Thresholds for a survey</h3><p>{html.escape(m['thresholds_note'])}</p>")
    names = ["roc", "pr", "confusion", "reliability", "predictions"]
    parts.append("".join(f'<img src="{figures_rel}/{n}_{split}.png" alt="{n}">' for n in names))
    return "\n".join(parts)


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    summary = run_summary(run_dir)
    config = summary["config"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lensfinder run {html.escape(run_dir.name)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>lensfinder run: {html.escape(str(config.get('task', '')))} / {html.escape(str(config.get('model', '')))}</h1>",
             "<h2>Configuration</h2>", _table(["setting", "value"], [[k, v] for k, v in config.items()]),
             '<h2>Training</h2><img src="figures/history.png" alt="history"><img src="figures/samples.png" alt="samples">']
    for split, m in summary["metrics"].items():
        parts.append(_split_section(split, m, "figures"))
    parts.append("</body></html>")
    path = run_dir / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path


def write_comparison(runs: dict[str, Path], out: Path, *, title: str = "lensfinder comparison") -> Path:
    """One page with the headline metrics of several runs side by side and each run's ROC figure."""
    out = Path(out)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    rows = []
    for label, run_dir in runs.items():
        summary = run_summary(run_dir)
        for split, m in summary["metrics"].items():
            rows.append([label, summary["config"].get("model", "?"), split, m.get("n", "?"),
                         *[m.get(key, "-") for key, _ in HEADLINE]])
    parts.append(_table(["run", "model", "split", "n", *[label for _, label in HEADLINE]], rows))
    for label, run_dir in runs.items():
        rel = os.path.relpath(Path(run_dir) / "figures", out.parent)
        for split in run_summary(run_dir)["metrics"]:
            history = f'<img src="{rel}/history.png">' if (Path(run_dir) / "figures" / "history.png").is_file() else ""
            parts.append(f"<h3>{html.escape(label)} ({html.escape(split)})</h3>"
                         f'<img src="{rel}/roc_{split}.png">{history}'
                         f'<a href="{os.path.relpath(Path(run_dir) / "report.html", out.parent)}">full report</a>')
    parts.append("</body></html>")
    write_text_atomic(out, "\n".join(parts))
    return out
