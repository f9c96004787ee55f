"""End to end on tiny data: train, evaluate, predict; the stream; calibration; the CLI once (resume: test_resume.py)."""

import csv
import os
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lensfinder import metrics as M
from lensfinder.config import TrainConfig
from lensfinder.data.layouts import discover
from lensfinder.evaluate.evaluate import evaluate
from lensfinder.evaluate.inference import predict_logits_array
from lensfinder.evaluate.predict import predict_catalog
from lensfinder.train.run import Run, load_model, train
from lensfinder.validation import InputError


def _config(task, data, out, **overrides):
    values = dict(task=task, data=str(data), out=str(out), epochs=1, batch_size=16, progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_substructure_round_trip(tmp_path, substructure_root, monkeypatch):
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
    classes = ["no", "sphere", "vort"]
    written = list(csv.DictReader(open(run.path / "predictions_test.csv")))
    labels = np.array([classes.index(r["label"]) for r in written])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in written])
    assert result["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert result["ece"] == pytest.approx(M.reliability(labels, probs)["ece"], abs=1e-5)
    # One-vs-rest AUCs rank on the uncalibrated log-probabilities (a temperature can reorder a class across images).
    images = np.stack([np.load(p) for p in discover(substructure_root, "substructure")["test"].paths])
    raw = predict_logits_array(load_model(run.path), images, calibrated=False)
    for c, name in enumerate(classes):
        assert result["auc_per_class"][name] == pytest.approx(M.roc_auc(labels == c, raw[:, c]), abs=1e-12)
    assert result["classification_report"]["macro avg"]["support"] == 30
    saved = json.loads((run.path / "metrics.json").read_text())
    assert saved["test"]["auc_macro"] == pytest.approx(result["auc_macro"])
    for figure in ("roc_test", "confusion_test", "reliability_test", "samples", "predictions_test"):
        assert (run.path / "figures" / f"{figure}.png").stat().st_size > 1000
    assert "auc" in (run.path / "report.html").read_text().lower()

    _check_multiclass_ranking_ignores_the_temperature(run, substructure_root, monkeypatch)

    out = predict_catalog([substructure_root / "test" / "vort"], tmp_path / "pred.csv", run=run.path)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 10 and set(rows[0]) == {"rank", "path", "p_no", "p_sphere", "p_vort", "score", "predicted", "views"}
    confidence = [max(float(r["p_no"]), float(r["p_sphere"]), float(r["p_vort"])) for r in rows]
    assert confidence == sorted(confidence, reverse=True)


def _check_multiclass_ranking_ignores_the_temperature(run, root, monkeypatch):
    """Hand-set log-probabilities and a temperature of 5: calibration reorders class 'no' across images (its AUC on
    the calibrated probabilities differs), and evaluate's per-class AUCs are those of the uncalibrated scores."""
    import lensfinder.evaluate.evaluate as evaluation

    labels = discover(root, "substructure")["test"].labels
    raw = np.log(np.random.default_rng(0).dirichlet([1, 1, 1], size=len(labels)))
    cooled = np.exp(5 * raw) / np.exp(5 * raw).sum(1, keepdims=True)
    real_load = evaluation.load_model

    def with_temperature(path):
        module = real_load(path)
        module.hparams.calibration = {"scale": 5.0, "bias": 0.0, "fit_prevalence": [1 / 3] * 3}
        return module

    monkeypatch.setattr(evaluation, "load_model", with_temperature)
    monkeypatch.setattr(evaluation, "predict_logits_array", lambda module, images, **kw: raw.copy())
    result = evaluation.evaluate(run, root, split="test")
    monkeypatch.undo()
    assert M.roc_auc(labels == 0, cooled[:, 0]) != pytest.approx(M.roc_auc(labels == 0, raw[:, 0]), abs=0.01)
    for c, name in enumerate(["no", "sphere", "vort"]):
        assert result["auc_per_class"][name] == pytest.approx(M.roc_auc(labels == c, raw[:, c]), abs=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(cooled.argmax(1) == labels))  # the calibrated probabilities


def test_lensfinding_round_trip_learns_and_reports_survey_metrics(tmp_path, lensfinding_root, monkeypatch):
    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run", model="report-cnn3", epochs=3))
    split = json.loads((run.path / "split.json").read_text())
    assert len(split["val_files"]) == 10 and split["seed"] == 0
    module = load_model(run.path)
    # Report class weights w_c = N / (2 N_c) on the 90 training images left after the split (72 non-lenses, 18 lenses).
    np.testing.assert_allclose(module.hparams.class_weights, [90 / (2 * 72), 90 / (2 * 18)])

    # Thresholds are chosen once, on the validation split, when the run is trained.
    record = json.loads((run.path / "thresholds.json").read_text())
    assert record["chosen_on"] == "val" and record["n"] == 10 and record["n_lenses"] == 2
    result = evaluate(run, lensfinding_root)
    assert result["auc"] > 0.8  # the toy lenses carry a bright blue ring: three epochs are enough
    written = list(csv.DictReader(open(run.path / "predictions_test.csv")))
    is_lens = np.array([r["label"] == "lens" for r in written])
    score = np.array([float(r["score"]) for r in written])
    # The written score is the calibrated log-odds: an increasing affine map of the uncalibrated margin, so the
    # ranking metrics evaluate reports (on the uncalibrated scores) are those of the catalogue's score.
    images = np.stack([np.load(p) for p in discover(lensfinding_root, "lensfinding")["test"].paths])
    raw = predict_logits_array(load_model(run.path), images, calibrated=False)
    calibration = json.loads((run.path / "calibration.json").read_text())
    np.testing.assert_allclose(score, calibration["scale"] * (raw[:, 1] - raw[:, 0]) + calibration["bias"], rtol=1e-12, atol=1e-12)
    assert result["auc"] == pytest.approx(M.roc_auc(is_lens, score), abs=1e-12)
    assert result["tpr10"] == M.tpr_before_false_positives(is_lens, score, 10)
    assert result["average_precision"] == pytest.approx(M.average_precision(is_lens, score), abs=1e-12)
    # ... applied to test, where the report shows what each cut does beside what it did on val.
    for goal, chosen in record["thresholds"].items():
        applied = result["thresholds"][goal]
        assert applied["threshold"] == chosen["threshold"] and applied["val"]["completeness"] == chosen["completeness"]
        if chosen["threshold"] is not None:
            assert applied["test"]["completeness"] == pytest.approx(np.mean(score[is_lens] >= chosen["threshold"]))
    evaluate(run, lensfinding_root, split="val")
    assert json.loads((run.path / "thresholds.json").read_text()) == record  # never rewritten by evaluate
    assert set(json.loads((run.path / "metrics.json").read_text())) == {"test", "val"}
    assert "chosen on val, applied to test" in (run.path / "report.html").read_text()
    assert (run.path / "figures" / "pr_test.png").exists()
    _check_saturated_scores_keep_their_order(run, lensfinding_root, monkeypatch)

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


def _check_saturated_scores_keep_their_order(run, root, monkeypatch):
    """Hand-set margins where the probabilities of the top ten non-lenses and six lenses all round to 1.0: the score
    keeps them apart, and TPR0/TPR10 are those of the score (on probabilities, all of them would be ties)."""
    import lensfinder.evaluate.evaluate as evaluation

    labels = discover(root, "lensfinding")["test"].labels
    margin = np.empty(len(labels))
    lenses, nonlenses = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    margin[nonlenses] = np.r_[np.arange(38.0, 48.0), np.linspace(-10, -1, len(nonlenses) - 10)]
    margin[lenses] = [50, 51, 52, 42.5, 43.5, 44.5, -20, -19, -18, -17]
    raw = np.stack([-np.logaddexp(0, margin), -np.logaddexp(0, -margin)], axis=1)  # log-softmax of (0, margin)
    assert np.all(np.exp(raw[margin > 30, 1]).astype(np.float32) == 1.0)

    monkeypatch.setattr(evaluation, "predict_logits_array", lambda module, images, **kw: raw.copy())
    result = evaluation.evaluate(run, root, split="test")
    monkeypatch.undo()
    assert result["tpr0"] == pytest.approx(3 / 10) and result["tpr10"] == pytest.approx(6 / 10)
    written = list(csv.DictReader(open(run.path / "predictions_test.csv")))
    p_lens = np.array([float(r["p_lens"]) for r in written])
    assert M.tpr_before_false_positives(labels == 1, p_lens, 1) == 0.0  # what the rounded probability would say
    score = np.array([float(r["score"]) for r in written])
    top = margin > 30
    assert np.all(p_lens[top] == 1.0) and len(set(score[top])) == top.sum()
    np.testing.assert_array_equal(np.argsort(score[top]), np.argsort(margin[top]))


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


def test_training_on_the_simulated_stream(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    import lensfinder.train.run as run_module
    from lensfinder.simulate import simulate_substructure

    class FirstBatches(Callback):
        def __init__(self):
            self.sums = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                self.sums.append(float(batch[0].double().sum()))

    spy = FirstBatches()
    real_get_trainer = run_module.get_trainer
    monkeypatch.setattr(run_module, "get_trainer", lambda *a, **k: _with_callback(real_get_trainer(*a, **k), spy))
    data = simulate_substructure(tmp_path / "sim", preset="deeplense-model-iii", counts={"train": 4, "val": 4}, progress=False)
    run = train(_config("substructure", data, tmp_path / "run", model="resnet-s", stream=True,
                        stream_preset="deeplense-model-iii", steps_per_epoch=2, batch_size=8, epochs=2))
    monkeypatch.undo()
    history = list(csv.DictReader(open(run.path / "history.csv")))
    assert [row["epoch"] for row in history] == ["1", "2"] and history[-1]["val/loss"] != ""
    assert load_model(run.path).hparams.preset == "deeplense-model-iii"
    assert len(spy.sums) == 2 and spy.sums[0] != spy.sums[1]  # every epoch simulates new objects
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # only the validation split is packed
    with pytest.raises(InputError, match="--stream-preset"):
        train(_config("substructure", data, tmp_path / "run2", stream=True))


def _with_callback(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer


def test_lens_fraction_sets_the_stream_and_its_class_weights(tmp_path):
    from lensfinder.simulate import simulate_lensfinding

    data = simulate_lensfinding(tmp_path / "sim", counts={"train_lenses": 10, "train_nonlenses": 10}, progress=False)
    # The report recipe weights classes (w_c = 1 / (K share_c)) and shuffles: a stream of 1 lens in 4.
    run = train(_config("lensfinding", data, tmp_path / "run", model="report-cnn3", stream=True, stream_preset="lsst-gri",
                        lens_fraction=0.25, steps_per_epoch=2, batch_size=8))
    np.testing.assert_allclose(load_model(run.path).hparams.class_weights, [1 / (2 * 0.75), 1 / (2 * 0.25)])
    assert yaml.safe_load((run.path / "config.yaml").read_text())["lens_fraction"] == 0.25
    with pytest.raises(InputError, match="--sampling balanced draws every class equally often"):
        train(_config("lensfinding", data, tmp_path / "r2", stream=True, stream_preset="lsst-gri", lens_fraction=0.25))
    with pytest.raises(InputError, match="needs --task lensfinding --stream"):
        train(_config("lensfinding", data, tmp_path / "r3", lens_fraction=0.25))


def test_calibration_keeps_ranking_and_the_prior_shift_is_exact_in_log_space(tmp_path, lensfinding_root):
    import torch

    from lensfinder.train.calibrate import apply_to_log_probs, fit_calibration

    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    overconfident = torch.log_softmax(6.0 * torch.stack([-(labels - 0.5 + 0.6 * torch.randn(400)), labels - 0.5 + 0.6 * torch.randn(400)], 1), 1)
    cal = fit_calibration(overconfident, labels)
    assert 0 < cal["scale"] < 1  # an overconfident model is cooled down
    assert cal["fit_prevalence"][1] == pytest.approx(float(labels.float().mean()))
    probs = torch.softmax(apply_to_log_probs(overconfident, cal["scale"], cal["bias"]), 1)
    # At the likelihood optimum of a fit with an intercept, the mean probability equals the base rate.
    assert float(probs[:, 1].mean()) == pytest.approx(float(labels.float().mean()), abs=1e-3)
    assert torch.equal(torch.argsort(probs[:, 1]), torch.argsort(overconfident[:, 1] - overconfident[:, 0]))

    run = train(_config("lensfinding", lensfinding_root, tmp_path / "run", epochs=2))
    module = load_model(run.path)
    module.hparams.calibration = cal
    fitted = cal["fit_prevalence"][1]
    # Margins up to 800 (probability 1 in float64): the prior shift adds exactly log prior odds ratio to the
    # log-odds, never clamped (a probability floored at 1e-12 caps the log-odds at 27.6).
    margin = torch.tensor([-30.0, 0.0, 5.0, 40.0, 800.0], dtype=torch.float64)
    raw = torch.stack([-torch.logaddexp(torch.zeros(5, dtype=torch.float64), margin),
                       -torch.logaddexp(torch.zeros(5, dtype=torch.float64), -margin)], 1)
    at_fit = M.log_odds(module.calibrate(raw).numpy(), positive=1)
    survey = M.log_odds(module.calibrate(raw, prevalence=1e-3).numpy(), positive=1)
    np.testing.assert_allclose(at_fit, cal["scale"] * margin.numpy() + cal["bias"], rtol=1e-12)
    np.testing.assert_allclose(survey - at_fit, np.log(1e-3 / (1 - 1e-3)) - np.log(fitted / (1 - fitted)), rtol=1e-9)
    with pytest.raises(InputError, match="--prevalence"):
        module.calibrate(raw, prevalence=1.5)

    result = evaluate(run, lensfinding_root)
    # Judged at the split's own lens fraction (1 in 7), the calibrated probabilities are shifted the same way.
    written = list(csv.DictReader(open(run.path / "predictions_test.csv")))
    score = np.array([float(r["score"]) for r in written])
    fit_odds = np.log(load_model(run.path).hparams.calibration["fit_prevalence"][1])
    split_prevalence = 10 / 70
    shift = np.log(split_prevalence / (1 - split_prevalence)) - (fit_odds - np.log1p(-np.exp(fit_odds)))
    is_lens = np.array([r["label"] == "lens" for r in written])
    expected = M.reliability(is_lens.astype(int), np.stack([1 / (1 + np.exp(score + shift)), 1 / (1 + np.exp(-(score + shift)))], 1))
    assert result["ece_at_split_prevalence"] == pytest.approx(expected["ece"], abs=1e-9)


def test_recipe_peak_floors_keep_arcs_beside_stars_and_noise_free_images_finite():
    """The asinh stretch with each recipe's peak floor: on an observed lens-finding cutout, a faint arc (3 sigma) next
    to a saturated star keeps its contrast; on a noise-free substructure image the stretch stays bounded. The other
    floor fails each case, so a recipe that swapped them would fail here."""
    import torch

    from lensfinder.data.normalize import Normalizer

    rng = np.random.default_rng(0)
    observed = rng.normal(0.0, 1.0, (1, 3, 64, 64))
    observed[..., 2, 2] = 1e5  # a bright star
    arc = np.zeros((64, 64), bool)
    arc[30:34, 20:44] = True
    observed[..., arc] += 3.0
    noise_free = np.zeros((1, 1, 64, 64))
    yy, xx = np.mgrid[:64, :64] - 31.5
    noise_free[0, 0] = np.exp(-0.5 * ((np.hypot(xx, yy) - 16) / 1.5) ** 2)

    def contrast(kind_floor, image):
        out = Normalizer("asinh", peak_floor=kind_floor)(torch.as_tensor(image, dtype=torch.float32)).numpy()
        return out, float(out[..., arc].mean() - out[..., ~arc].mean())

    lens = TrainConfig(task="lensfinding", data="d", out="o").resolved()
    sub = TrainConfig(task="substructure", data="d", out="o").resolved()
    assert contrast(lens.peak_floor, observed)[1] > 0.4  # asinh(3) / 3 = 0.61: the arc stands out of the noise
    assert contrast(sub.peak_floor, observed)[1] < 0.05  # the star sets the scale and flattens the arc
    assert np.abs(contrast(sub.peak_floor, noise_free)[0]).max() < 3  # asinh(1000) / 3 = 2.5
    assert np.abs(contrast(lens.peak_floor, noise_free)[0]).max() > 4  # the noise-free ring blown up by 1e6
    with pytest.raises(InputError, match="peak_floor"):
        TrainConfig(task="lensfinding", data="d", out="o", peak_floor=2.0).resolved()
