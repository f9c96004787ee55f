"""The weights shipped inside the package, read from their metadata only: which exist and which fits a task,
a preset and an input shape. Below every stage, so that training (--init shipped), prediction and the
survey engine share one lookup."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import safe_open

from .validation import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_catalog(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """One entry per shipped file: path, task, preset, channels, size, model (read from metadata only)."""
    entries = []
    for path in sorted(Path(weights_dir).glob("*.safetensors")) if Path(weights_dir).is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as handle:
                hparams = json.loads((handle.metadata() or {}).get("hparams", "{}"))
        except (SafetensorError, OSError, json.JSONDecodeError):
            continue
        entries.append({"path": path, "task": hparams.get("task"), "preset": hparams.get("preset"),
                        "channels": hparams.get("in_channels"), "size": hparams.get("image_size"),
                        "model": hparams.get("model_name")})
    return entries


def named_weights(path: Path | str) -> Path:
    """`path` as given, or, when it does not exist and is a bare name (`lensfinding-broad`), the shipped weights file
    of that name (weights/lensfinding-broad.safetensors) if there is one."""
    path = Path(path)
    shipped = WEIGHTS_DIR / f"{path.name}.safetensors"
    if not path.exists() and len(path.parts) == 1 and shipped.is_file():
        return shipped
    return path


def serving_weights(weights_dir: Path = WEIGHTS_DIR) -> dict[str, str]:
    """preset -> file name of the shipped weights that serve it without being trained on it (`weights/serves.yaml`,
    with the measurement behind each)."""
    path = Path(weights_dir) / "serves.yaml"
    if not path.is_file():
        return {}
    import yaml

    return {preset: entry["weights"] for preset, entry in (yaml.safe_load(path.read_text()) or {}).items()}


def _describe(entries: list[dict]) -> str:
    return "; ".join(f"{e['path'].name} ({e['task']}, preset {e['preset']}, {e['channels']}x{e['size']}x{e['size']})"
                     for e in entries) or "none"


def shipped_weights(task: str, *, preset: str | None = None, channels: int | None = None, size: int | None = None,
                    weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The shipped weights of `task` whose input matches: trained on `preset`, taking `channels` x `size` x `size`
    images (each None: any). Several matches: `<task>.safetensors` first, else the first by name."""
    catalog = shipped_catalog(weights_dir)
    for_task = [e for e in catalog if e["task"] == task]

    def matching(wanted_preset):
        return [e for e in for_task if (wanted_preset is None or e["preset"] == wanted_preset)
                and (channels is None or e["channels"] == channels) and (size is None or e["size"] == size)]

    found = matching(preset)
    if not found and preset is not None:  # weights measured to serve a preset they were not trained on
        stand_in = serving_weights(weights_dir).get(preset)
        found = [e for e in matching(None) if stand_in is not None and e["path"].name == stand_in]
    if not found:
        wanted = ", ".join(f"{k} {v}" for k, v in (("preset", preset), ("channels", channels), ("size", size))
                           if v is not None)
        raise InputError(f"no shipped weights for task {task!r}{' with ' + wanted if wanted else ''}; shipped: "
                         f"{_describe(for_task or catalog)}. Pass --preset with one of those, or --run with a "
                         "trained run folder")
    default = [e for e in found if e["path"].name == f"{task}.safetensors"]
    return (default or found)[0]["path"]
