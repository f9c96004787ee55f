"""Multi-process training: `--accelerator cpu --devices 2 --strategy ddp` (gloo) trains, writes the history a single
process writes, and resumes with every rank on the same checkpoint. Lightning launches the second process by running
the same command again; only rank 0 checks and writes the run folder."""

import csv
import json
import os
import subprocess
import sys

from lensfinder.train.history import HISTORY_COLUMNS

from conftest import make_substructure_layout


def _train(data, out, *extra):
    command = [sys.executable, "-m", "lensfinder", "train", "--task", "substructure", "--data", str(data), "--out", str(out),
               "--model", "report-cnn4", "--batch-size", "4", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
               "--no-progress", *extra]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ddp_on_two_cpu_processes_trains_and_resumes(tmp_path):
    data = make_substructure_layout(tmp_path / "data", per_class={"train": 8, "val": 4}, size=16)
    out = tmp_path / "run"
    result = _train(data, out, "--epochs", "1")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr and "already holds a run" not in result.stderr
    with open(out / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == HISTORY_COLUMNS and [r["epoch"] for r in rows] == ["1"]
    assert all(rows[0][key] != "" for key in HISTORY_COLUMNS)  # val/auc gathered from both ranks' halves
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "last.ckpt").is_file()

    # Both ranks resume from checkpoints/last.ckpt; the plateau run is extended to 2 epochs (recorded once, by rank 0).
    _train(data, out, "--epochs", "2", "--resume")
    with open(out / "history.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert json.loads((out / "resumes.json").read_text()) == [
        {"checkpoint": "checkpoints/last.ckpt", "checkpoint_epoch": 0, "global_step": 3, "epochs_before": 1, "epochs": 2}]
