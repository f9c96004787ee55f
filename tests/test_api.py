"""The Python API (lensfinder.api, re-exported at the package top): arrays, files and catalogues in, a DataFrame
ranked by score out; the same scores as `lensfinder predict`; shapes refused by name; the version recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import lensfinder
from conftest import HAND_SET_GAIN, hand_set_lens_model
from lensfinder import InputError
from lensfinder.train.module import LensModule

GAIN = HAND_SET_GAIN


def hand_set_model(path=None) -> LensModule:
    """The shared hand-set lens model (conftest): logits (0, GAIN * mean pixel)."""
    return hand_set_lens_model(path)


VALUES = np.array([0.30, 0.05, 0.90, 0.0, 0.60], dtype=np.float32)  # one constant cutout per value


def constant_images(values=VALUES) -> np.ndarray:
    return np.stack([np.full((3, 8, 8), v, np.float32) for v in values])


def test_array_in_dataframe_out_ranked_by_float64_log_odds():
    table = lensfinder.predict(hand_set_model(), constant_images())
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["id", "p_nonlens", "p_lens", "score", "predicted", "views"]
    assert table.index.name == "rank" and table.index.tolist() == [1, 2, 3, 4, 5]
    # ids are the rows of the input, in the order of their values: 0.90, 0.60, 0.30, 0.05, 0.0
    assert table["id"].tolist() == [2, 4, 0, 1, 3]
    assert table["score"].dtype == np.float64
    np.testing.assert_allclose(table["score"], GAIN * VALUES[[2, 4, 0, 1, 3]], rtol=1e-5, atol=1e-5)
    # p_lens is the logistic of the score; a score of exactly 0 is a coin toss, predicted nonlens (argmax of ties)
    np.testing.assert_allclose(table["p_lens"], 1 / (1 + np.exp(-table["score"])), rtol=1e-12)
    np.testing.assert_allclose(table["p_lens"] + table["p_nonlens"], 1.0, rtol=1e-12)
    assert table["predicted"].tolist() == ["lens", "lens", "lens", "lens", "nonlens"]
    assert table.attrs["task"] == "lensfinding" and table.attrs["lensfinder_version"] == lensfinder.__version__


def test_scores_beyond_probability_one_still_rank():
    """At GAIN * 2 and GAIN * 3 both probabilities round to 1.0 in float64; the scores still order them."""
    table = lensfinder.predict(hand_set_model(), constant_images([2.0, 3.0]), ids=["a", "b"])
    assert (table["p_lens"] == 1.0).all()
    assert table["id"].tolist() == ["b", "a"] and table["score"].iloc[0] > table["score"].iloc[1]


def test_one_image_and_a_tensor_are_accepted():
    one = lensfinder.predict(hand_set_model(), constant_images()[2])  # (C, H, W)
    assert len(one) == 1 and one["id"].tolist() == [0]
    from_tensor = lensfinder.predict(hand_set_model(), torch.from_numpy(constant_images()))
    assert from_tensor["id"].tolist() == [2, 4, 0, 1, 3]


@pytest.mark.parametrize("images, found", [
    (np.zeros((8, 8), np.float32), r"\(8, 8\)"),  # one band without its channel axis
    (np.zeros((2, 1, 3, 8, 8), np.float32), r"\(2, 1, 3, 8, 8\)"),
    (np.zeros((2, 1, 8, 8), np.float32), "C=3"),  # one band for a three-band model
    (np.zeros((2, 3, 16, 16), np.float32), "8x8"),  # the wrong size
    (np.zeros((0, 3, 8, 8), np.float32), "at least one image"),
    (np.zeros((2, 3, 8, 8), bool), "numeric"),
])
def test_shapes_the_model_cannot_take_are_refused_by_name(images, found):
    with pytest.raises(InputError, match=found):
        lensfinder.predict(hand_set_model(), images)


def test_nan_pixels_and_mismatched_ids_are_refused():
    images = constant_images()
    images[3, 1, 2, 2] = np.nan
    with pytest.raises(InputError, match="index 3"):
        lensfinder.predict(hand_set_model(), images)
    with pytest.raises(InputError, match="one id per image"):
        lensfinder.predict(hand_set_model(), constant_images(), ids=["a"])


def test_api_and_cli_give_the_same_scores_on_the_same_files(tmp_path):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    model = hand_set_model(tmp_path / "model.safetensors")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = rng.uniform(0.0, 1.0, (12, 3, 8, 8)).astype(np.float32)  # not constant: the network's real sums
    for i, image in enumerate(images):
        np.save(folder / f"obj_{i:02d}.npy", image)
    result = CliRunner().invoke(app, ["predict", str(folder), "--run", str(tmp_path / "model.safetensors"),
                                      "--out", str(tmp_path / "cli.csv"), "--no-progress"])
    assert result.exit_code == 0, result.output
    cli = pd.read_csv(tmp_path / "cli.csv", float_precision="round_trip")

    from_files = lensfinder.predict(tmp_path / "model.safetensors", folder)
    assert from_files["id"].tolist() == cli["path"].tolist()
    assert from_files["score"].tolist() == cli["score"].tolist()  # bit for bit: the same function wrote both
    # a loaded model, and the in-memory array, give the same ranking and scores
    from_module = lensfinder.predict(model, [folder])
    assert from_module["score"].tolist() == cli["score"].tolist()
    in_memory = lensfinder.predict(model, images, ids=[str(folder / f"obj_{i:02d}.npy") for i in range(12)])
    assert in_memory["id"].tolist() == cli["path"].tolist()
    np.testing.assert_allclose(in_memory["score"], cli["score"], rtol=1e-12, atol=1e-12)

    # a catalogue: a DataFrame (or a CSV) listing the cutouts in a `path` column, relative to the CSV's folder
    listing = pd.DataFrame({"path": [f"cutouts/obj_{i:02d}.npy" for i in (5, 0, 7)]})
    listing.to_csv(tmp_path / "listing.csv", index=False)
    from_catalogue = lensfinder.predict(model, tmp_path / "listing.csv")
    assert len(from_catalogue) == 3
    expected = cli.set_index("path")["score"]
    wanted = [expected[str(tmp_path / "cutouts" / key.rpartition("/")[2])] for key in from_catalogue["id"]]
    np.testing.assert_allclose(from_catalogue["score"], wanted, rtol=1e-5)  # float32 sums differ with the batch
    assert sorted(wanted, reverse=True) == wanted

    # the catalogue records what wrote it
    meta = json.loads((tmp_path / "cli.meta.json").read_text())
    assert meta["lensfinder"] == lensfinder.__version__ and meta["scored"] == 12 and meta["task"] == "lensfinding"


def test_bad_files_are_skipped_and_listed(tmp_path):
    model = hand_set_model(tmp_path / "model.safetensors")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    np.save(folder / "good.npy", np.full((3, 8, 8), 0.5, np.float32))
    np.save(folder / "small.npy", np.zeros((3, 4, 4), np.float32))
    table = lensfinder.predict(model, folder, out=tmp_path / "kept.csv")
    assert table["id"].tolist() == [str(folder / "good.npy")]
    assert [key for key, _ in table.attrs["skipped"]] == [str(folder / "small.npy")]
    assert (tmp_path / "kept.csv").is_file() and table.attrs["catalogue"] == str(tmp_path / "kept.csv")
    with pytest.raises(InputError, match="4x4"):
        lensfinder.predict(model, folder, on_bad="fail")


def test_load_model_shipped_is_a_torch_module_in_three_lines():
    model = lensfinder.load_model("shipped", task="lensfinding")
    assert isinstance(model, torch.nn.Module) and not model.training
    images = np.random.default_rng(0).normal(0.0, 0.01, (3, 3, 64, 64)).astype(np.float32)  # sky noise, nanomaggies
    table = lensfinder.predict(model, images, tta=False)
    assert sorted(table["id"]) == [0, 1, 2] and table["score"].is_monotonic_decreasing
    with torch.no_grad():  # the module in the user's own loop: raw pixels in, logits out
        logits = model(torch.from_numpy(images))
    assert logits.shape == (3, 2)
    expected = lensfinder.metrics.log_odds(model.predict_logits(torch.from_numpy(images), tta=False).numpy(), positive=1)
    np.testing.assert_allclose(table.sort_values("id")["score"], expected, rtol=1e-6, atol=1e-6)


def test_load_model_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(InputError, match="task="):
        lensfinder.load_model("shipped")
    with pytest.raises(InputError, match="no shipped weights"):
        lensfinder.load_model("shipped", task="lensfinding", size=17)
    with pytest.raises(InputError, match="no trained model"):
        lensfinder.load_model(tmp_path)
    hand_set_model(tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="disagrees"):
        lensfinder.load_model(tmp_path, task="substructure")
    assert lensfinder.load_model(tmp_path).hparams.image_size == 8


def test_listings_and_argument_checks():
    presets = lensfinder.list_presets()
    assert {"deeplense-model-iii", "lsst-gri"} <= set(presets)
    assert "lsst-gri" in lensfinder.list_presets("lensfinding")
    assert "lsst-gri" not in lensfinder.list_presets("substructure")
    assert "resnet-s" in lensfinder.list_models()
    assert {e["task"] for e in lensfinder.shipped_models()} == {"lensfinding", "substructure"}
    with pytest.raises(InputError, match="confusers"):
        lensfinder.simulate("substructure", "unused", counts={"train": 1}, confusers=["shells"])
    with pytest.raises(InputError, match="task"):
        lensfinder.simulate("galaxies", "unused")
    with pytest.raises(InputError, match="unknown setting"):
        lensfinder.train("lensfinding", "unused", "unused", epochs_total=3)


def test_train_evaluate_predict_through_the_api(tmp_path, lensfinding_root):
    run = lensfinder.train("lensfinding", lensfinding_root, tmp_path / "run", model="report-cnn3", epochs=1,
                           batch_size=32, seed=3)
    version = json.loads((run.path / "version.json").read_text())
    assert version["lensfinder"] == lensfinder.__version__ and version["torch"] == torch.__version__
    metrics = lensfinder.evaluate(run.path, lensfinding_root)
    assert metrics["n"] == 70 and 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["tpr0"] <= metrics["tpr10"] <= 1.0
    assert (run.path / "metrics.json").is_file()
    table = lensfinder.predict(run.path, lensfinding_root / "test_lenses")
    assert len(table) == 10 and table["score"].is_monotonic_decreasing


def test_stage_names_stay_callable_and_importable():
    import lensfinder.evaluate.evaluate as evaluation  # binds the subpackage to lensfinder.evaluate
    import lensfinder.train.run as run_module

    assert callable(lensfinder.evaluate) and callable(lensfinder.train) and callable(lensfinder.simulate)
    assert lensfinder.evaluate.evaluate is evaluation and run_module.Run is lensfinder.train.run.Run
    with pytest.raises(InputError, match="task"):  # the module, called, is the API function
        lensfinder.evaluate("shipped", "unused")


def test_import_is_light():
    code = "import sys, lensfinder; print(sorted(m for m in ('torch', 'lightning', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_preset_is_served_by_the_weights_measured_on_it_and_a_stand_in_is_never_guessed(tmp_path):
    from lensfinder.shipped import WEIGHTS_DIR, serving_weights, shipped_weights

    assert shipped_weights("substructure", preset="deeplense-model-i").name == serving_weights()["deeplense-model-i"]
    assert shipped_weights("substructure", preset="deeplense-model-iii").name == "substructure.safetensors"
    with pytest.raises(InputError, match="no shipped weights.*deeplense-model-i, size 64"):
        shipped_weights("substructure", preset="deeplense-model-i", size=64)  # the stand-in takes 150 x 150 only
    # a folder without serves.yaml: only the weights trained on the preset itself
    bare = tmp_path / "weights"
    bare.mkdir()
    (bare / "substructure-deeplense-common-test-i.safetensors").write_bytes(
        (WEIGHTS_DIR / "substructure-deeplense-common-test-i.safetensors").read_bytes())
    with pytest.raises(InputError, match="no shipped weights.*preset deeplense-model-i"):
        shipped_weights("substructure", preset="deeplense-model-i", weights_dir=bare)
    assert shipped_weights("substructure", preset="deeplense-common-test-i", weights_dir=bare).parent == bare
