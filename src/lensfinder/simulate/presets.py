"""Presets are data: YAML files in ``presets/``. Files starting with ``_`` hold the physics shared by
every preset of a task and are merged underneath the preset's own keys."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

from ..validation import InputError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_TASK_BASE = {"substructure": "_substructure.yaml", "lensfinding": "_lensfinding.yaml"}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@lru_cache(maxsize=None)
def _raw(name: str) -> dict:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))
    return {name: _raw(name)["description"] for name in names}


def load_preset(name: str, *, task: str | None = None) -> dict:
    """The merged preset as a plain dict; raises ValueError naming the known presets."""
    known = list_presets()
    if name not in known:
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    raw = _raw(name)
    if task is not None and raw["task"] != task:
        fits = [n for n in known if _raw(n)["task"] == task]
        raise InputError(
            f"preset {name!r} is a {raw['task']} preset, not {task}; use one of: {', '.join(fits)}"
        )
    preset = _merge(_raw(_TASK_BASE[raw["task"]][:-5]), raw)
    if raw["task"] == "lensfinding":
        preset["bands"] = raw["bands"]
    return preset
