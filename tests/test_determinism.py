"""Same seed, same data, CPU: identical weights, history and metrics; every epoch's draw depends on (seed, epoch) only."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lensfinder.config import TrainConfig
from lensfinder.data.datamodule import EpochSampler
from lensfinder.evaluate.evaluate import evaluate
from lensfinder.train.run import train


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    yield
    torch.use_deterministic_algorithms(False)


def _run(data, out, seed):
    # The lens-finding default recipe: balanced sampling, random D4 augmentation, one-cycle schedule, TTA.
    config = TrainConfig(task="lensfinding", data=str(data), out=str(out), model="resnet-s", epochs=2, batch_size=16,
                         seed=seed, deterministic=True, progress=False)
    run = train(config)
    return run, load_file(run.model_path), evaluate(run, data)


def test_same_seed_same_weights_history_and_metrics(tmp_path, lensfinding_root):
    first, weights_a, metrics_a = _run(lensfinding_root, tmp_path / "a", seed=5)
    second, weights_b, metrics_b = _run(lensfinding_root, tmp_path / "b", seed=5)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert (first.path / "history.csv").read_text() == (second.path / "history.csv").read_text()
    assert json.loads((first.path / "calibration.json").read_text()) == json.loads((second.path / "calibration.json").read_text())
    assert json.dumps(metrics_a, sort_keys=True) == json.dumps(metrics_b, sort_keys=True)  # NaN-safe equality

    _, weights_c, _ = _run(lensfinding_root, tmp_path / "c", seed=6)
    assert not all(torch.equal(weights_a[key], weights_c[key]) for key in weights_a)  # the seed does matter


def test_epoch_sampler_depends_on_seed_and_epoch_and_splits_between_ranks():
    labels = np.r_[np.ones(10, int), np.zeros(90, int)]

    def draw(mode, seed, epoch, rank=0, world=1):
        sampler = EpochSampler(labels, mode=mode, seed=seed, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw("shuffle", 0, 3) == draw("shuffle", 0, 3)  # a resumed run redraws epoch 3 exactly
    assert draw("shuffle", 0, 3) != draw("shuffle", 0, 4) and draw("shuffle", 0, 3) != draw("shuffle", 1, 3)
    assert sorted(draw("shuffle", 0, 3)) == list(range(100))
    # Three ranks: equal shares (34, padded by wrapping) that together hold every image of the one-process draw.
    shares = [draw("shuffle", 0, 3, rank, 3) for rank in range(3)]
    assert [len(s) for s in shares] == [34, 34, 34] and set().union(*shares) == set(range(100))
    whole = draw("shuffle", 0, 3)
    assert shares[1][:5] == whole[1:15:3]
    # Balanced: lenses (10 % of the files) make half the draws.
    drawn = np.concatenate([labels[draw("balanced", 0, epoch)] for epoch in range(20)])
    assert len(drawn) == 2000 and abs(drawn.mean() - 0.5) < 0.05
