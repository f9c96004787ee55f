"""Fine-tuning from trained weights: `lensfinder train --init shipped|RUN [--freeze stem|body]`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import safe_open

from conftest import make_lensfinding_layout
from lensfinder.config import INIT_LR_FACTOR, RECIPES, TrainConfig
from lensfinder.evaluate.shipped import shipped_weights
from lensfinder.train.run import load_model, train
from lensfinder.validation import InputError


def _config(tmp_path, data, **kw):
    return TrainConfig(task="lensfinding", data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=16,
                       progress=False, **kw)


def test_init_from_shipped_weights_records_the_parent_and_freezes_the_body(tmp_path):
    data = make_lensfinding_layout(tmp_path / "data", counts={"train_lenses": 24, "train_nonlenses": 40}, size=64)
    config = _config(tmp_path, data, init="shipped", freeze="body")
    assert config.resolved().lr == pytest.approx(RECIPES["lensfinder"]["lensfinding"]["lr"] * INIT_LR_FACTOR)
    run = train(config)
    parent = json.loads((run.path / "parent.json").read_text())
    shipped = load_model(shipped_weights("lensfinding"))
    assert parent["init"] == "shipped" and len(parent["sha256"]) == 64 and parent["freeze"] == "body"
    child = load_model(run.path)
    assert child.hparams.parent["sha256"] == parent["sha256"]  # carried inside the exported weights
    with safe_open(str(run.path / "model.safetensors"), framework="pt") as handle:
        assert parent["sha256"] in handle.metadata()["hparams"]
    # the frozen body kept the shipped weights; the head trained
    for name, value in child.model.state_dict().items():
        if name.startswith("head"):
            continue
        if "running" in name or "num_batches" in name:
            continue  # batch-norm statistics follow the new data
        torch.testing.assert_close(value, shipped.model.state_dict()[name], msg=name)
    head = [n for n in child.model.state_dict() if n.startswith("head") and n.endswith("weight")][0]
    assert not torch.equal(child.model.state_dict()[head], shipped.model.state_dict()[head])


def test_init_refuses_weights_of_another_task_or_band_count(tmp_path):
    data = make_lensfinding_layout(tmp_path / "data", counts={"train_lenses": 8, "train_nonlenses": 8}, size=64)
    substructure = shipped_weights("substructure")
    with pytest.raises(InputError, match="cannot start this run from these weights.*task: parent 'substructure'"):
        train(_config(tmp_path, data, init=str(substructure), model=load_model(substructure).hparams.model_name))
    with pytest.raises(InputError, match="--freeze stem keeps trained weights fixed, so it needs --init"):
        _config(tmp_path, data, freeze="stem").resolved()
