"""150 x 150 substructure sets: the Common Test I layout (train/val only, float64 min-max files), held-out
test fractions, validation labelling, the area-average model and the choice among shipped weights."""

import json

import numpy as np
import pytest
import torch

from conftest import make_substructure_layout
from lensfinder.config import TrainConfig
from lensfinder.data.layouts import discover, evaluation_listing, held_out_listings
from lensfinder.evaluate.evaluate import evaluate
from lensfinder.evaluate.shipped import input_shape, shipped_catalog, shipped_for_inputs, shipped_weights
from lensfinder.models import create_model
from lensfinder.models.resnet_pool import area_factor
from lensfinder.train.run import export_model, load_model, train
from lensfinder.validation import InputError


def _config(data, out, **overrides):
    values = dict(task="substructure", data=str(data), out=str(out), epochs=1, batch_size=16, progress=False,
                  model="resnet-pool-s", tta=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_common_test_i_preset_writes_float64_minmax_train_val_only(tmp_path):
    from lensfinder.simulate.writer import simulate_substructure

    out = simulate_substructure(tmp_path / "ct", preset="deeplense-common-test-i",
                                counts={"train": 2, "val": 1, "test": 0}, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["train", "val"]
    files = sorted(out.glob("*/*/*.npy"))
    assert len(files) == 9
    for path in files:
        image = np.load(path)
        assert image.shape == (1, 150, 150) and image.dtype == np.float64
        assert image.min() == 0.0 and image.max() == 1.0
    assert len(np.unique(np.load(files[0]))) > 100  # Poisson counts scaled: many levels, not a constant
    assert set(discover(out, "substructure")) == {"train", "val"}


def test_unknown_output_scaling_is_refused(tmp_path):
    from lensfinder.simulate.writer import substructure_output

    with pytest.raises(ValueError, match="output_scaling"):
        substructure_output(np.ones((2, 2)), {"name": "x", "output_scaling": "zscore"})
    assert substructure_output(np.arange(4.0).reshape(2, 2), {}).dtype == np.float32  # published default


def test_test_fraction_is_stratified_seeded_and_disjoint(tmp_path):
    root = make_substructure_layout(tmp_path / "d", per_class={"train": 20, "val": 4})
    splits = discover(root, "substructure")
    a = held_out_listings(splits, val_fraction=0.1, seed=0, test_fraction=0.25)
    b = held_out_listings(splits, val_fraction=0.1, seed=0, test_fraction=0.25)
    c = held_out_listings(splits, val_fraction=0.1, seed=1, test_fraction=0.25)
    assert a["test"].class_counts().tolist() == [5, 5, 5] and a["train"].class_counts().tolist() == [15, 15, 15]
    assert a["test"].paths == b["test"].paths and a["test"].paths != c["test"].paths
    assert not set(a["test"].paths) & set(a["train"].paths)
    assert a["val"].paths == splits["val"].paths  # the val folder stays the validation split
    with pytest.raises(InputError, match="test_fraction"):
        held_out_listings(splits, val_fraction=0.1, seed=0, test_fraction=1.0)


def test_train_val_layout_end_to_end_with_held_out_test(tmp_path):
    root = make_substructure_layout(tmp_path / "d", per_class={"train": 20, "val": 6})
    plain = train(_config(root, tmp_path / "plain"))
    with pytest.raises(InputError, match="--split val"):
        evaluate(plain, root, split="test")
    result = evaluate(plain, root, split="val")
    assert result["role"] == "validation" and result["n"] == 18
    assert json.loads((plain.path / "metrics.json").read_text())["val"]["role"] == "validation"
    assert "Validation numbers" in (plain.path / "report.html").read_text()

    held = train(_config(root, tmp_path / "held", test_fraction=0.2))
    record = json.loads((held.path / "split.json").read_text())
    assert len(record["test_files"]) == 12 and all(f.startswith("train/") for f in record["test_files"])
    result = evaluate(held, root, split="test")
    assert result["role"] == "test" and result["n"] == 12
    scored = [line.split(",")[0] for line in (held.path / "predictions_test.csv").read_text().splitlines()[1:]]
    assert sorted(scored) == sorted(record["test_files"])  # exactly the held-out files, never a training file


def test_recorded_test_files_must_exist(tmp_path):
    root = make_substructure_layout(tmp_path / "d", per_class={"train": 4, "val": 2})
    record = tmp_path / "split.json"
    record.write_text(json.dumps({"test_files": ["train/no/gone.npy"]}))
    with pytest.raises(InputError, match="missing"):
        evaluation_listing(discover(root, "substructure"), "test", record=record)


@pytest.mark.parametrize("size, factor", [(64, 1), (150, 2), (300, 4)])
def test_area_average_stem_follows_the_image_size(size, factor):
    assert area_factor(size) == factor
    model = create_model("resnet-pool-s", 1, 3, image_size=size).eval()
    x = torch.randn(2, 1, size, size)
    assert model(x).shape == (2, 3)
    if factor > 1:  # the stem sees the k x k block means: a pattern with zero block means is invisible
        checker = torch.zeros(1, 1, size, size)
        checker[..., ::2, :] = 1.0
        checker[..., 1::2, :] = -1.0
        torch.testing.assert_close(model(checker), model(torch.zeros_like(checker)))


def _ship(tmp_path, name, *, preset, size):
    from lensfinder.train.module import LensModule

    module = LensModule(task="substructure", model_name="resnet-pool-s", in_channels=1, num_classes=3, image_size=size,
                        class_names=["no", "sphere", "vort"], normalization={"kind": "asinh"}, class_weights=None,
                        lr=1e-3, weight_decay=0.0, scheduler="cosine", augment=False, tta=False, preset=preset)
    export_model(module, tmp_path / "weights" / name)


def test_shipped_weights_match_the_input(tmp_path):
    _ship(tmp_path, "substructure.safetensors", preset="deeplense-model-iii", size=64)
    _ship(tmp_path, "substructure-deeplense-common-test-i.safetensors", preset="deeplense-common-test-i", size=150)
    _ship(tmp_path, "substructure-deeplense-model-i.safetensors", preset="deeplense-model-i", size=150)
    weights = tmp_path / "weights"
    assert len(shipped_catalog(weights)) == 3
    assert shipped_weights("substructure", weights_dir=weights).name == "substructure.safetensors"
    assert shipped_weights("substructure", size=150, preset="deeplense-model-i", weights_dir=weights).name == \
        "substructure-deeplense-model-i.safetensors"
    with pytest.raises(InputError, match="size 96.*substructure-deeplense-model-i.safetensors"):
        shipped_weights("substructure", size=96, weights_dir=weights)
    with pytest.raises(InputError, match="preset deeplense-model-iii"):  # a 150 px input and a 64 px preset
        shipped_weights("substructure", preset="deeplense-model-iii", size=150, weights_dir=weights)
    images = tmp_path / "images"
    images.mkdir()
    np.save(images / "a.npy", np.zeros((1, 150, 150)))
    assert input_shape([images]) == (1, 150)
    assert load_model(shipped_weights("substructure", size=150, weights_dir=weights)).hparams.image_size == 150


def test_shipped_substructure_weights_cover_each_deeplense_resolution():
    assert shipped_for_inputs("substructure", []).name == "substructure.safetensors"  # 64 x 64 Model III
    shipped = {e["size"]: e for e in shipped_catalog() if e["task"] == "substructure"}
    assert set(shipped) == {64, 150}
    assert shipped[150]["preset"] == "deeplense-common-test-i" and shipped[150]["model"] == "resnet-pool-s"
    assert shipped[150]["path"].stat().st_size <= 5 * 1024 * 1024


def test_shipped_150_weights_score_common_test_i_files(tmp_path):
    # Files exactly as the Common Test I set holds them (float64, min-max scaled): the size picks the weights.
    from lensfinder.simulate.writer import simulate_substructure

    data = simulate_substructure(tmp_path / "ct", preset="deeplense-common-test-i", counts={"val": 2}, seed=20_251,
                                 progress=False)
    weights = shipped_for_inputs("substructure", [data / "val"])
    assert weights.name == "substructure-deeplense-common-test-i.safetensors"
    module = load_model(weights)
    images = torch.from_numpy(np.stack([np.load(p) for p in sorted((data / "val").glob("*/*.npy"))])).float()
    probs = module.predict_proba(images, tta=False)
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(1), torch.ones(6, dtype=probs.dtype))


def test_unpooled_resnet_pool_s_is_resnet_s():
    # The substructure default at every size: at 64 px it must stay the network the shipped Model III weights use.
    torch.manual_seed(0)
    reference = create_model("resnet-s", 1, 3, image_size=64).eval()
    torch.manual_seed(0)
    pooled = create_model("resnet-pool-s", 1, 3, image_size=64).eval()
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in pooled.state_dict().items()}
    x = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(pooled(x), reference(x))


def test_predict_cli_refuses_a_preset_whose_weights_do_not_take_the_files(tmp_path):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        np.save(images / f"{i}.npy", np.random.default_rng(i).random((1, 150, 150)))
    result = CliRunner().invoke(app, ["predict", str(images), "--out", str(tmp_path / "out.csv"), "--task",
                                      "substructure", "--preset", "deeplense-model-iii"])
    assert result.exit_code != 0 and not (tmp_path / "out.csv").exists()
    assert isinstance(result.exception, InputError)
    assert "preset deeplense-model-iii" in str(result.exception) and "substructure.safetensors" in str(result.exception)
