"""The documentation site builds with warnings as errors (`mkdocs build --strict`), and its generated parts come
from the code and the results on disk: every command, every preset and the shipped weights' numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_site_builds_strict_with_generated_pages(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (a dev extra: pip install -e '.[dev]'); the docs build is not checked")
    site = tmp_path / "site"
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                            text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr

    from lensfinder.cli import app
    import typer

    cli = (site / "site" / "cli" / "index.html").read_text()
    group = typer.main.get_command(app)
    for name in group.list_commands(group.make_context("lensfinder", [], resilient_parsing=True)):
        assert f"lensfinder {name}" in cli, name
    assert "--prevalence" in cli and "lensfinder simulate lensfinding" in cli

    presets = (site / "site" / "presets" / "index.html").read_text()
    for path in (ROOT / "src" / "lensfinder" / "simulate" / "presets").glob("[!_]*.yaml"):
        assert path.stem in presets, path.stem

    results = (site / "site" / "results" / "index.html").read_text()
    shipped = json.loads((ROOT / "benchmarks" / "results" / "quality_shipped.json").read_text())
    for row in shipped["rows"]:
        assert f"{row['auc']:.4f}" in results

    api = (site / "site" / "api" / "index.html").read_text()
    assert "lensfinder.api.predict" in api and "nanomaggies" in api
    cards = (site / "site" / "model-cards" / "index.html").read_text()
    assert cards.count("never shown") >= len(list((ROOT / "src" / "lensfinder" / "weights").glob("*.safetensors")))
    # a page that links out of docs/ to a result figure gets a served copy
    assert (site / "repo" / "benchmarks" / "results" / "roc_lensfinding_shipped.png").is_file()
