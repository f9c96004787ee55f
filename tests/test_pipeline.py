"""End to end on tiny data: train one epoch, evaluate, predict; resume; the CLI once."""

import csv
import os
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lensfinder.config import TrainConfig
from lensfinder.evaluate.evaluate import evaluate
from lensfinder.evaluate.predict import predict_catalog
from lensfinder.train.run import Run, load_model, train
from lensfinder.validation import InputError


def _config(task, data, out, **overrides):
    values = dict(task=task, data=str(data), out=str(out), epochs=1, batch_size=16, progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_substructure_round_trip(tmp_path, substructure_root):
    run = train(_config("substructure", substructure_root, tmp_path / "run", model="report-cnn4"))
    for name in ("config.yaml", "normalization.json", "history.csv", "model.safetensors", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "figures/history.png"):
        assert (run.path / name).exists(), name
    umask = os.umask(0)
    os.umask(umask)
    assert (run.path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any output
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    assert config["recipe"] == "report" and config["scheduler"] == "plateau" and config["lr"] == 1e-3
    norm = json.loads((run.path / "normalization.json").read_text())
    assert norm["kind"] == "channel" and len(norm["mean"]) == 1
    assert not (run.path / "split.json").exists()  # the layout has its own val split

    result = evaluate(run, substructure_root, split="test")
    assert result["n"] == 30 and set(result["auc_per_class"]) == {"no", "sphere", "vort"}
    for key in ("auc_macro", "auc_micro", "auc_weighted", "accuracy", "ece"):
        assert 0.0 <= result[key] <= 1.0
    assert result["classification_report"]["macro avg"]["support"] == 30
    saved = json.loads((run.path / "metrics.json").read_text())
    assert saved["test"]["auc_macro"] == pytest.approx(result["auc_macro"])
    for figure in ("roc_test", "confusion_test", "reliability_test", "samples", "predictions_test"):
        assert (run.path / "figures" / f"{figure}.png").stat().st_size > 1000
    assert "auc" in (run.path / "report.html").read_text().lower()

    out = predict_catalog([substructure_root / "test" / "vort"], tmp_path / "pred.csv", run=run.path)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 10 and set(rows[0]) == {"rank", "path", "p_no", "p_sphere", "p_vort", "score", "predicted"}
    confidence = [max(float(r["p_no"]), float(r["p_sphere"]), float(r["p_vort"])) for r in rows]
    assert confidence == sorted(confidence, reverse=True)


def test_lensfinding_round_trip_learns_and_reports_survey_metrics(tmp_path, lensfinding_root):
    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run", model="report-cnn3", epochs=3))
    split = json.loads((run.path / "split.json").read_text())
    assert len(split["val_files"]) == 10 and split["seed"] == 0
    module = load_model(run.path)
    # Report class weights w_c = N / (2 N_c) on the 90 training images left after the split (72 non-lenses, 18 lenses).
    np.testing.assert_allclose(module.hparams.class_weights, [90 / (2 * 72), 90 / (2 * 18)])

    result = evaluate(run, lensfinding_root)
    for key in ("auc", "average_precision", "tpr0", "tpr10", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3"):
        assert 0.0 <= result[key] <= 1.0
    assert result["auc"] > 0.8  # the toy lenses carry a bright blue ring: three epochs are enough
    thresholds = json.loads((run.path / "thresholds.json").read_text())
    assert set(thresholds) >= {"purity_0.9_at_1e-3", "false_per_million_100"}
    assert (run.path / "figures" / "pr_test.png").exists()

    out = predict_catalog([lensfinding_root / "test_lenses", lensfinding_root / "test_nonlenses"], tmp_path / "c.csv", run=run.path)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 70
    scores = [float(r["p_lens"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and rows[0]["rank"] == "1"
    assert sum("test_lenses" in r["path"] for r in rows[:10]) >= 6

    shards = [list(csv.DictReader(open(predict_catalog([lensfinding_root / "test_lenses"], tmp_path / f"s{k}.csv",
                                                       run=run.path, shard=(k, 3))))) for k in range(3)]
    assert sorted(r["path"] for part in shards for r in part) == sorted(str(p) for p in (lensfinding_root / "test_lenses").iterdir())
    with pytest.raises(InputError, match="shard 3/3"):
        predict_catalog([lensfinding_root / "test_lenses"], tmp_path / "s.csv", run=run.path, shard=(3, 3))


def test_resume_continues_from_last_checkpoint(tmp_path, substructure_root, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    import lensfinder.train.run as run_module

    class Interrupt(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                raise RuntimeError("power cut")

    real_get_trainer = run_module.get_trainer

    def interrupted_trainer(*args, **kwargs):
        trainer = real_get_trainer(*args, **kwargs)
        trainer.callbacks.insert(0, Interrupt())
        return trainer

    out = tmp_path / "run"
    monkeypatch.setattr(run_module, "get_trainer", interrupted_trainer)
    with pytest.raises(RuntimeError, match="power cut"):
        train(_config("substructure", substructure_root, out, epochs=2, model="resnet-s", scheduler="onecycle"))
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(run_module, "get_trainer", real_get_trainer)

    with pytest.raises(InputError, match="already holds a run"):
        train(_config("substructure", substructure_root, out, epochs=2))
    train(_config("substructure", substructure_root, out), resume=True)
    history = list(csv.DictReader(open(out / "history.csv")))
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert (out / "model.safetensors").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        train(_config("substructure", substructure_root, tmp_path / "fresh"), resume=True)


def test_prediction_refuses_wrong_channels_and_output_type(tmp_path, lensfinding_root):
    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run"))
    single = tmp_path / "single"
    single.mkdir()
    np.save(single / "one_band.npy", np.ones((32, 32), np.float32))
    with pytest.raises(InputError, match=r"one_band\.npy: expected shape \(C, H, W\) with C=3"):
        predict_catalog([single], tmp_path / "p.csv", run=run.path)
    with pytest.raises(InputError, match="unsupported output type"):
        predict_catalog([single], tmp_path / "p.xlsx", run=run.path)
    with pytest.raises(InputError, match="no trained model"):
        predict_catalog([single], tmp_path / "p.csv", run=tmp_path)


def test_fits_inputs_single_hdu_and_one_file_per_band(tmp_path, lensfinding_root):
    from astropy.io import fits

    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run"))
    cube = np.load(sorted((lensfinding_root / "test_lenses").iterdir())[0])
    fits.writeto(tmp_path / "cube.fits", cube)
    bands = tmp_path / "bands"
    bands.mkdir()
    for b, plane in zip("gri", cube):
        fits.writeto(bands / f"obj7_{b}.fits", plane)
    whole = list(csv.DictReader(open(predict_catalog([tmp_path / "cube.fits"], tmp_path / "a.csv", run=run.path))))
    split = list(csv.DictReader(open(predict_catalog([bands], tmp_path / "b.csv", run=run.path, band_suffixes=["g", "r", "i"]))))
    assert split[0]["path"].endswith("obj7")
    assert float(whole[0]["p_lens"]) == pytest.approx(float(split[0]["p_lens"]), rel=1e-5)
    (bands / "obj7_i.fits").unlink()
    with pytest.raises(InputError, match="missing for band"):
        predict_catalog([bands], tmp_path / "b.csv", run=run.path, band_suffixes=["g", "r", "i"])


def test_cli_user_errors_print_one_line(tmp_path, substructure_root):
    result = subprocess.run([sys.executable, "-m", "lensfinder", "train", "--task", "substructure", "--data",
                             str(tmp_path / "missing"), "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "data root not found" in result.stderr and "Traceback" not in result.stderr

    result = subprocess.run([sys.executable, "-m", "lensfinder", "train", "--task", "substructure", "--data",
                             str(substructure_root), "--out", str(tmp_path / "r"), "--model", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "known models" in result.stderr and "Traceback" not in result.stderr


def test_cli_train_evaluate_predict(tmp_path, substructure_root):
    run_dir = tmp_path / "cli-run"
    base = [sys.executable, "-m", "lensfinder"]
    subprocess.run(base + ["train", "--task", "substructure", "--data", str(substructure_root), "--out", str(run_dir),
                           "--epochs", "1", "--no-progress", "--model", "report-cnn4"], check=True, capture_output=True)
    shown = subprocess.run(base + ["evaluate", "--run", str(run_dir), "--data", str(substructure_root)],
                           check=True, capture_output=True, text=True)
    assert '"auc"' in shown.stdout
    subprocess.run(base + ["predict", str(substructure_root / "test"), "--run", str(run_dir), "--out", str(tmp_path / "p.csv")],
                   check=True, capture_output=True)
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 30
    assert Run(run_dir).config.model == "report-cnn4"


def test_training_on_the_simulated_stream(tmp_path):
    from lensfinder.simulate import simulate_substructure

    data = simulate_substructure(tmp_path / "sim", preset="deeplense-model-iii", counts={"train": 4, "val": 4}, progress=False)
    run = train(_config("substructure", data, tmp_path / "run", model="resnet-s", stream=True,
                        stream_preset="deeplense-model-iii", steps_per_epoch=2, batch_size=8, epochs=2))
    history = list(csv.DictReader(open(run.path / "history.csv")))
    assert [row["epoch"] for row in history] == ["1", "2"] and history[-1]["val/loss"] != ""
    assert load_model(run.path).hparams.preset == "deeplense-model-iii"
    with pytest.raises(InputError, match="--stream-preset"):
        train(_config("substructure", data, tmp_path / "run2", stream=True))


def test_calibration_keeps_ranking_and_prior_shift(tmp_path, lensfinding_root):
    import torch

    from lensfinder.train.calibrate import apply_to_log_probs, fit_calibration, shift_prevalence

    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    overconfident = torch.log_softmax(6.0 * torch.stack([-(labels - 0.5 + 0.6 * torch.randn(400)), labels - 0.5 + 0.6 * torch.randn(400)], 1), 1)
    cal = fit_calibration(overconfident, labels)
    assert 0 < cal["scale"] < 1  # an overconfident model is cooled down
    assert cal["fit_prevalence"][1] == pytest.approx(float(labels.float().mean()))
    probs = torch.softmax(apply_to_log_probs(overconfident, cal["scale"], cal["bias"]), 1)
    # At the likelihood optimum of a fit with an intercept, the mean probability equals the base rate.
    assert float(probs[:, 1].mean()) == pytest.approx(float(labels.float().mean()), abs=1e-3)
    survey = shift_prevalence(probs, cal, 1e-3)
    fitted = cal["fit_prevalence"][1]
    odds_ratio = (survey[:, 1] / survey[:, 0]) / (probs[:, 1] / probs[:, 0])  # Bayes: odds scale with the prior odds
    torch.testing.assert_close(odds_ratio, torch.full_like(odds_ratio, (1e-3 / (1 - 1e-3)) / (fitted / (1 - fitted))), rtol=1e-3, atol=0)
    assert torch.equal(torch.argsort(survey[:, 1]), torch.argsort(probs[:, 1]))
    assert torch.equal(torch.argsort(probs[:, 1]), torch.argsort(overconfident[:, 1] - overconfident[:, 0]))

    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run", epochs=2))
    assert json.loads((run.path / "calibration.json").read_text())["scale"] > 0
    result = evaluate(run, lensfinding_root)
    assert 0 <= result["ece_at_split_prevalence"] <= 1
    raw = list(csv.DictReader(open(predict_catalog([lensfinding_root / "test_lenses"], tmp_path / "a.csv", run=run.path))))
    rare = list(csv.DictReader(open(predict_catalog([lensfinding_root / "test_lenses"], tmp_path / "b.csv", run=run.path, prevalence=1e-3))))
    assert [r["path"] for r in raw] == [r["path"] for r in rare]
    assert all(float(b["p_lens"]) <= float(a["p_lens"]) + 1e-9 for a, b in zip(raw, rare))


def test_recipes_set_the_asinh_peak_floor_and_bad_values_are_refused():
    from lensfinder.config import TrainConfig

    lens = TrainConfig(task="lensfinding", data="d", out="o").resolved()
    assert lens.normalization == "asinh" and lens.peak_floor == 1e-6  # observed cutouts: scale by the noise
    assert TrainConfig(task="substructure", data="d", out="o").resolved().peak_floor == 1e-3  # noise-free sims
    with pytest.raises(InputError, match="peak_floor"):
        TrainConfig(task="lensfinding", data="d", out="o", peak_floor=2.0).resolved()
