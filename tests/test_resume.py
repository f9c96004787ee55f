"""`train --resume`: a run killed with SIGKILL mid-epoch continues from its checkpoint and ends with the weights of
an uninterrupted run; changed settings are refused by name; a larger --epochs extends a plateau run, recorded."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

import lensfinder.train.run as run_module
from lensfinder.config import TrainConfig
from lensfinder.train.run import train
from lensfinder.validation import InputError

SETTINGS = dict(model="resnet-s", epochs=3, batch_size=8, seed=3, deterministic=True)


@pytest.fixture
def one_thread():
    """The killed run is a subprocess with OMP_NUM_THREADS=1; float sums match it only on one thread here too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


class Spy(Callback):
    """Where the resumed process starts, and how many optimiser steps it runs itself."""

    def __init__(self):
        self.start, self.steps = None, 0

    def on_train_start(self, trainer, module):
        self.start = (trainer.current_epoch, trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps += 1


def _config(data, out, **overrides):
    return TrainConfig(task="substructure", data=str(data), out=str(out), progress=False, **{**SETTINGS, **overrides})


def _kill_after_first_checkpoint(data, out):
    command = [sys.executable, "-m", "lensfinder", "train", "--task", "substructure", "--data", str(data), "--out", str(out),
               "--no-progress", *[x for k, v in SETTINGS.items() if k != "deterministic"
                                  for x in (f"--{k.replace('_', '-')}", str(v))], "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, substructure_root, monkeypatch, one_thread):
    out = tmp_path / "killed"
    checkpoint = _kill_after_first_checkpoint(substructure_root, out)
    assert not (out / "model.safetensors").exists()  # killed before the end
    steps_per_epoch = 72 // SETTINGS["batch_size"]
    assert checkpoint["epoch"] < SETTINGS["epochs"] - 1 and checkpoint["global_step"] == steps_per_epoch * (checkpoint["epoch"] + 1)

    with pytest.raises(InputError, match=r"--batch-size: run 8, given 16; --lr: run 0\.003, given 0\.1"):
        train(_config(substructure_root, out, lr=0.1, batch_size=16), resume=True)
    with pytest.raises(InputError, match="onecycle learning-rate schedule was laid out for 3 epochs"):
        train(_config(substructure_root, out, epochs=5), resume=True)
    with pytest.raises(InputError, match="already holds a run"):
        train(_config(substructure_root, out))

    spy = Spy()
    real_get_trainer = run_module.get_trainer

    def spied(*args, **kwargs):
        trainer = real_get_trainer(*args, **kwargs)
        trainer.callbacks.append(spy)
        return trainer

    monkeypatch.setattr(run_module, "get_trainer", spied)
    # Only the flags that name the run: the others come from its config.yaml.
    train(TrainConfig(task="substructure", data=str(substructure_root), out=str(out), progress=False), resume=True)
    monkeypatch.setattr(run_module, "get_trainer", real_get_trainer)

    # It continued where the checkpoint left off, and ran only the remaining steps.
    assert spy.start == (checkpoint["epoch"] + 1, checkpoint["global_step"])
    assert spy.steps == steps_per_epoch * SETTINGS["epochs"] - checkpoint["global_step"]
    resumes = json.loads((out / "resumes.json").read_text())
    assert resumes == [{"checkpoint": "checkpoints/last.ckpt", "checkpoint_epoch": checkpoint["epoch"],
                        "global_step": checkpoint["global_step"]}]

    reference = train(_config(substructure_root, tmp_path / "uninterrupted"))
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(reference.model_path)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    history = list(csv.DictReader(open(out / "history.csv")))
    assert history == list(csv.DictReader(open(reference.path / "history.csv")))
    assert [r["epoch"] for r in history] == ["1", "2", "3"] and all(r["train/loss"] and r["val/loss"] for r in history)


def test_a_larger_epochs_extends_a_plateau_run_and_is_recorded(tmp_path, substructure_root):
    out = tmp_path / "run"
    train(TrainConfig(task="substructure", data=str(substructure_root), out=str(out), model="report-cnn4", epochs=1,
                      batch_size=16, progress=False))
    with pytest.raises(InputError, match="--epochs 1 is fewer than the run's 2"):
        yaml_config = yaml.safe_load((out / "config.yaml").read_text())
        (out / "config.yaml").write_text(yaml.safe_dump({**yaml_config, "epochs": 2}))
        train(TrainConfig(task="substructure", data=str(substructure_root), out=str(out), epochs=1), resume=True)
    (out / "config.yaml").write_text(yaml.safe_dump(yaml_config))

    train(TrainConfig(task="substructure", data=str(substructure_root), out=str(out), epochs=2, progress=False), resume=True)
    assert [r["epoch"] for r in csv.DictReader(open(out / "history.csv"))] == ["1", "2"]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    record = json.loads((out / "resumes.json").read_text())
    assert record == [{"checkpoint": "checkpoints/last.ckpt", "checkpoint_epoch": 0, "global_step": 5,
                       "epochs_before": 1, "epochs": 2}]
    with pytest.raises(InputError, match="nothing to resume"):
        train(TrainConfig(task="substructure", data=str(substructure_root), out=str(tmp_path / "fresh")), resume=True)
