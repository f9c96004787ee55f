"""What an installed lensfinder carries: the shipped weights with a model card each, the simulator presets, and
one version (`lensfinder --version`, `lensfinder.__version__`, the package metadata)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

import lensfinder

ROOT = Path(__file__).resolve().parent.parent


def test_resources_hold_the_weights_with_cards_and_the_presets():
    weights = files("lensfinder") / "weights"
    names = sorted(p.name for p in weights.iterdir() if p.name.endswith(".safetensors"))
    assert {"lensfinding.safetensors", "substructure.safetensors"} <= set(names)
    for name in names:
        card = weights / name.replace(".safetensors", ".md")
        assert card.is_file(), f"{name}: no model card ({card.name}): data, recipe, metrics, limits"
        assert "never shown" in card.read_text()
    presets = files("lensfinder") / "simulate" / "presets"
    yaml_names = {p.name[:-5] for p in presets.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_")}
    assert yaml_names == set(lensfinder.list_presets())
    assert {e["path"].name for e in lensfinder.shipped_models()} == set(names)


def test_model_cards_quote_the_benchmark_numbers():
    shipped = json.loads((ROOT / "benchmarks" / "results" / "quality_shipped.json").read_text())
    weights = ROOT / "src" / "lensfinder" / "weights"
    for row in shipped["rows"]:
        card = (weights / f"{row['task']}.md").read_text()
        if row["task"] == "lensfinding":
            for key in ("auc", "ap", "tpr0", "tpr10"):
                assert f"{row[key]:.4f}" in card, (row["task"], key)
        else:
            assert f"{row['accuracy']:.4f}" in card and f"{row['auc']:.5f}" in card


def test_one_version_everywhere():
    from typer.testing import CliRunner

    from lensfinder.cli import app

    assert lensfinder.__version__ == importlib.metadata.version("lensfinder")
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lensfinder {lensfinder.__version__}"


def test_built_wheel_carries_weights_cards_and_presets(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    if shutil.which("git") is None:
        pytest.skip("no git")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("lensfinder-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for weight in (ROOT / "src" / "lensfinder" / "weights").glob("*.safetensors"):
        assert f"lensfinder/weights/{weight.name}" in names
        assert f"lensfinder/weights/{weight.stem}.md" in names
    for preset in (ROOT / "src" / "lensfinder" / "simulate" / "presets").glob("*.yaml"):
        assert f"lensfinder/simulate/presets/{preset.name}" in names
    assert "lensfinder/api.py" in names
