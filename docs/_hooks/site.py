"""MkDocs hook: the pages' generated parts, computed at build time from the code and the results on disk, so that
no number or option is typed twice. A page asks for a part with a line `<!-- generated: NAME -->`:

  presets      the simulator presets (src/lensfinder/simulate/presets/*.yaml)
  cli          every command's usage, help and options (the typer app)
  quality      the quality tables (benchmarks/results/quality*.json)
  speed        inference, simulation and training speed (benchmarks/results/quality*.json, simulate.json, train_speed.json)
  robustness   the robustness table (benchmarks/results/robustness.json), when it has been run
  model-cards  the model card of each shipped weight (src/lensfinder/weights/*.md)

Links from a page to files of the repository outside docs/ (../benchmarks/results/roc.png, ../src/...) are
served as copies under repo/, so the pages read the same on GitHub and on the site."""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "src" / "lensfinder" / "simulate" / "presets"
RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS = ROOT / "src" / "lensfinder" / "weights"
REPO_PREFIX = "repo"  # where copies of the repository files a page links to are served
SERVED = [RESULTS, PRESETS]
SERVED_SUFFIXES = {".png", ".json", ".yaml", ".csv", ".log"}  # not .md: pages of their own, outside the nav
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)
LINK = re.compile(r"(\]\()([^)\s#]+)")


# ------------------------------------------------------------------------------------------------ mkdocs events
def on_files(files, config):
    from mkdocs.structure.files import File

    for folder in SERVED:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in SERVED_SUFFIXES:
                files.append(File.generated(config, f"{REPO_PREFIX}/{path.relative_to(ROOT).as_posix()}",
                                            abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)
    return LINK.sub(lambda m: m.group(1) + _served_link(m.group(2), page.file.src_uri), markdown)


def _served_link(target: str, page_uri: str) -> str:
    """A relative link that leaves docs/ for a served repository file, pointed at its copy under repo/."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return target
    docs = Path(os.path.normpath(ROOT / "docs" / posixpath.dirname(page_uri) / target))
    if (ROOT / "docs") in docs.parents or not docs.is_file() or not any(f in docs.parents for f in SERVED):
        return target
    served = f"{REPO_PREFIX}/{docs.relative_to(ROOT).as_posix()}"
    return posixpath.relpath(served, posixpath.dirname(page_uri) or ".")


# ------------------------------------------------------------------------------------------------ tables
def _table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def presets() -> str:
    import yaml

    rows = []
    for path in sorted(PRESETS.glob("*.yaml")):
        if path.stem.startswith("_"):
            continue
        preset = yaml.safe_load(path.read_text())
        bands = preset.get("bands")
        if isinstance(bands, dict):
            seeing = ", ".join(f"{b} {v.get('seeing_arcsec')}" for b, v in bands.items())
            names = ", ".join(bands)
        else:
            seeing, names = preset.get("psf_fwhm_arcsec"), "1 band"
        noise = preset.get("noise", {})
        noise_text = ("off by default" if noise.get("default") is False else "on") if noise else "survey depth"
        header_comment = " ".join(line.lstrip("# ").strip() for line in path.read_text().splitlines()
                                  if line.startswith("#"))
        rows.append([f"`{preset['name']}`", preset["task"], names, preset.get("num_pix"), preset.get("pixel_scale_arcsec"),
                     seeing, noise_text, preset.get("description"), header_comment or "–"])
    return _table(["preset", "task", "bands", "pixels", "arcsec / pixel", "PSF FWHM (arcsec)", "noise", "description",
                   "numbers from"], rows)


def _results(pattern: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob(pattern))]


def _machine(record: dict) -> str:
    machine = record.get("machine", {})
    return (f"{machine.get('date', '?')[:10]}, lensfinder {machine.get('lensfinder', '?')}, torch {machine.get('torch', '?')}, "
            f"{machine.get('cpu_count', '?')} CPU(s), CUDA {machine.get('cuda') or 'none'}")


def quality() -> str:
    out = []
    columns = [("entry", "entry"), ("task", "task"), ("preset", "preset"), ("model", "model"),
               ("epochs", "epochs_trained"), ("test images", "n_test"), ("accuracy", "accuracy"), ("AUC", "auc"),
               ("AP", "ap"), ("TPR0", "tpr0"), ("TPR10", "tpr10"), ("ECE", "ece")]
    for path, record in _results("quality*.json"):
        rows = record.get("rows", [])
        if not rows:
            continue
        out.append(f"### `{path.name}`\n\n{_machine(record)}.\n\n"
                   + _table([c for c, _ in columns], [[row.get(k) for _, k in columns] for row in rows]))
    return "\n".join(out) or "No quality results yet: run `python benchmarks/quality.py`.\n"


def speed() -> str:
    rows = []
    for path, record in _results("quality*.json"):
        for entry in record.get("inference", []):
            rows.append([path.name, entry.get("task"), entry.get("model"), entry.get("input"), entry.get("per_s"),
                         entry.get("per_s_tta"), entry.get("threads"), entry.get("load_average_1min")])
    out = ["### Inference (cutouts per second, CPU)\n",
           _table(["file", "task", "model", "input", "per s", "per s with 8-view TTA", "threads", "load average"], rows)]
    simulate = RESULTS / "simulate.json"
    if simulate.is_file():
        record = json.loads(simulate.read_text())
        out += [f"\n### Simulation (images per second; `simulate.json`, {_machine(record)})\n",
                _table(["preset", "class", "lensfinder", f"lensfinder, {record.get('workers')} workers", "lenstronomy",
                        "ratio", "ratio with workers"],
                       [[r.get("preset"), r.get("class"), r.get("lensfinder_img_s"), r.get("lensfinder_workers_img_s"),
                         r.get("lenstronomy_img_s"), r.get("ratio"), r.get("ratio_workers")]
                        for r in record.get("rows", [])])]
    training = RESULTS / "train_speed.json"
    if training.is_file():
        record = json.loads(training.read_text())
        out += [f"\n### Training (images per second, forward + backward + step, batch 64; `train_speed.json`, {_machine(record)}; "
                f"{record.get('note') or ''})\n",
                _table(["model", "image size", "threads", "images per s"],
                       [[r.get("model"), r.get("size"), r.get("threads"), r.get("images_per_s")] for r in record.get("rows", [])])]
    return "\n".join(out)


def robustness() -> str:
    path = RESULTS / "robustness.json"
    if not path.is_file():
        return "No robustness results yet: run `python benchmarks/robustness.py` (then `... table`).\n"
    record = json.loads(path.read_text())
    rows = record.get("rows", record if isinstance(record, list) else [])
    if not rows:
        return "The robustness results hold no rows yet.\n"
    keys = [k for k in rows[0] if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    return f"{_machine(record) if isinstance(record, dict) else ''}\n\n" + _table(keys, [[r.get(k) for k in keys] for r in rows])


def cli() -> str:
    import typer

    from lensfinder.cli import _simulate_command, app

    group = typer.main.get_command(app)
    ctx = group.make_context("lensfinder", [], resilient_parsing=True)
    out = [_command_section("lensfinder", group, ctx, level=2)]
    for name in group.list_commands(ctx):
        command = _simulate_command() if name == "simulate" else group.get_command(ctx, name)
        sub_ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        out.append(_command_section(f"lensfinder {name}", command, sub_ctx, level=2))
        if hasattr(command, "list_commands"):
            for sub in command.list_commands(sub_ctx):
                leaf = command.get_command(sub_ctx, sub)
                leaf_ctx = leaf.make_context(sub, [], parent=sub_ctx, resilient_parsing=True)
                out.append(_command_section(f"lensfinder {name} {sub}", leaf, leaf_ctx, level=3))
    return "\n".join(out)


def _command_section(title: str, command, ctx, *, level: int) -> str:
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    text = [f"{'#' * level} `{title}`\n", f"```\n{usage}\n```\n", (command.help or "").strip() + "\n"]
    rows = []
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        if param.param_type_name == "argument":
            names = f"`{param.name.upper()}`"
        else:
            names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        kind = getattr(param, "display_type", None) or getattr(getattr(param, "type", None), "name", "")
        kind = kind(ctx) if callable(kind) else kind
        default = param.default if not callable(param.default) and param.default not in (None, ()) else ""
        rows.append([names, str(kind), "required" if param.required else default, getattr(param, "help", "") or ""])
    if rows:
        text.append(_table(["option", "type", "default", "meaning"], rows))
    return "\n".join(text)


def model_cards() -> str:
    cards = sorted(WEIGHTS.glob("*.md"))
    if not cards:
        return "No model cards.\n"
    # each card's headings one level down, under this page's title
    return "\n\n".join(re.sub(r"^(#+) ", r"#\1 ", card.read_text(), flags=re.M) for card in cards)


GENERATORS = {"presets": presets, "cli": cli, "quality": quality, "speed": speed, "robustness": robustness,
              "model-cards": model_cards}
