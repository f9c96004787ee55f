"""The demo end to end on a scale small enough for CI: what it measures, not the words it writes."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from lensfinder import demo
from lensfinder.config import DEFAULT_MODELS
from lensfinder.validation import InputError

TINY = {
    "substructure": {"preset": "deeplense-model-iii", "counts": {"train": 6, "val": 3, "test": 5},
                     "epochs": {"baseline": 1, "default": 1}},
    "lensfinding": {"preset": "lsst-gri", "counts": {"train_lenses": 4, "train_nonlenses": 16,
                                                     "test_lenses": 4, "test_nonlenses": 12},
                    "epochs": {"baseline": 1, "default": 1}},
}
TEST_SIZE = {"substructure": 3 * 5, "lensfinding": 4 + 12}


def report_rows(html: str) -> dict[str, list[str]]:
    """The comparison table: run label -> its cells (run, model, split, n, accuracy, AUC, ...)."""
    rows = {}
    for row in re.findall(r"<tr>(<td>.*?)</tr>", html):
        cells = re.findall(r"<td>(.*?)</td>", row)
        rows[cells[0]] = cells
    return rows


def test_demo_scores_every_run_on_its_own_test_split(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.SCALES, "tiny", TINY)
    out = tmp_path / "demo"
    rows = report_rows(demo.run_demo(out, scale="tiny", progress=False).read_text())
    expected_runs = {f"{task}-{role}-{model}" for task in TINY for role, model in
                     (("baseline", demo.BASELINES[task]), ("default", DEFAULT_MODELS[task]), ("shipped", DEFAULT_MODELS[task]))}
    assert {p.name for p in (out / "runs").iterdir()} == expected_runs
    assert len(rows) == len(expected_runs)  # one table row per run, on the test split only
    for run_dir in (out / "runs").iterdir():
        task = run_dir.name.split("-")[0]
        test = json.loads((run_dir / "metrics.json").read_text())["test"]
        assert test["n"] == TEST_SIZE[task]  # scored on the demo's whole test split
        label = next(label for label in rows if label.startswith(f"{task}: ") and run_dir.name.split("-")[1] in label)
        assert rows[label][2:6] == ["test", str(TEST_SIZE[task]), f"{test['accuracy']:.4f}", f"{test['auc']:.4f}"]
        if "shipped" in run_dir.name:
            # weights trained at full scale, on test images they never saw: far above chance (0.5)
            assert test["auc"] >= 0.8, (run_dir.name, test["auc"])
    steps = [line.split("\t") for line in (out / "timings.txt").read_text().splitlines()]
    assert len(steps) == 2 * 4 and all(float(seconds.removesuffix(" s")) >= 0 for _, seconds in steps)

    # Running again reuses what is finished: no data set is simulated again, no model trained further.
    simulated = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.npy")}
    models = {p: load_file(p) for p in (out / "runs").rglob("model.safetensors")}
    demo.run_demo(out, scale="tiny", progress=False)
    assert {p: p.stat().st_mtime_ns for p in simulated} == simulated
    for path, tensors in models.items():
        again = load_file(path)
        assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors), path


def test_unknown_scale_is_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match=r"--scale 'huge': unknown demo scale; expected one of small, full"):
        demo.run_demo(tmp_path / "demo", scale="huge")
    assert not (tmp_path / "demo").exists()
