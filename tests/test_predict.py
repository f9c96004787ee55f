"""Catalogue prediction with a model whose logits are set by hand: the ranking score, shards, bad cutouts and
the checks of the options, against values worked out here."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from conftest import HAND_SET_GAIN, hand_set_lens_model
from lensfinder.evaluate.predict import predict_catalog
from lensfinder.validation import InputError

GAIN = HAND_SET_GAIN


def hand_set_model(path, *, gain: float = GAIN):
    """The shared hand-set lens model (conftest), exported to `path`; returns the path."""
    hand_set_lens_model(path, gain=gain)
    return path


def constant_cutout(value: float) -> np.ndarray:
    return np.full((3, 8, 8), value, np.float32)


def rows_of(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cutouts_whose_probabilities_round_to_one_are_still_ranked_by_log_odds(tmp_path):
    model = hand_set_model(tmp_path / "model.safetensors")
    values = {"a.npy": 0.5, "b.npy": 1.0, "c.npy": 1.5, "d.npy": 0.05}  # file order is not the ranking order
    for name, value in values.items():
        np.save(tmp_path / name, constant_cutout(value))
    catalogue = predict_catalog([tmp_path / name for name in values], tmp_path / "cat.csv", run=model)
    rows = rows_of(catalogue)
    assert list(rows[0]) == ["rank", "path", "p_nonlens", "p_lens", "score", "predicted", "views"]
    assert [os.path.basename(r["path"]) for r in rows] == ["c.npy", "b.npy", "a.npy", "d.npy"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    # log-odds of lens = GAIN * value: 60, 40, 20, 2 (worked out by hand from the weights), at full precision
    np.testing.assert_allclose([float(r["score"]) for r in rows], [60.0, 40.0, 20.0, 2.0], rtol=1e-6)
    # the top three are all 1.0 as float32 probabilities: ranked by p_lens they would tie in file order
    assert all(np.float32(float(r["p_lens"])) == np.float32(1.0) for r in rows[:3])
    assert float(rows[3]["p_lens"]) == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    assert [r["predicted"] for r in rows] == ["lens"] * 4
    assert catalogue.scored == 4 and catalogue.skipped == [] and catalogue.skipped_path is None


def test_shards_merged_by_score_give_the_order_of_the_whole_run(tmp_path):
    model = hand_set_model(tmp_path / "model.safetensors")
    rng = np.random.default_rng(3)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i, value in enumerate(rng.uniform(0.0, 3.0, 14)):
        np.save(folder / f"obj_{i:02d}.npy", constant_cutout(value))
    whole = rows_of(predict_catalog([folder], tmp_path / "all.csv", run=model, batch_size=4))
    assert sum(np.float32(float(r["p_lens"])) == 1.0 for r in whole) >= 5  # saturated: only the score orders them
    parts = [row for k in range(3)
             for row in rows_of(predict_catalog([folder], tmp_path / f"part{k}.csv", run=model, shard=(k, 3)))]
    merged = sorted(parts, key=lambda r: -float(r["score"]))
    assert [r["path"] for r in merged] == [r["path"] for r in whole]
    np.testing.assert_allclose([float(r["score"]) for r in merged], [float(r["score"]) for r in whole], rtol=1e-6)


def test_bad_cutouts_are_listed_and_skipped_or_stop_the_run(tmp_path, capsys):
    from astropy.io import fits

    model = hand_set_model(tmp_path / "model.safetensors")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    np.save(folder / "good_1.npy", constant_cutout(1.0))
    np.save(folder / "good_2.npy", constant_cutout(0.5))
    nan = constant_cutout(1.0)
    nan[1, 2, 2] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "one_band.npy", np.ones((8, 8), np.float32))
    np.save(folder / "big.npy", np.ones((3, 16, 16), np.float32))
    (folder / "truncated.npy").write_bytes((folder / "good_1.npy").read_bytes()[:100])
    fits.HDUList([fits.PrimaryHDU()]).writeto(folder / "empty.fits")
    catalogue = predict_catalog([folder], tmp_path / "cat.csv", run=model)
    assert [os.path.basename(r["path"]) for r in rows_of(catalogue)] == ["good_1.npy", "good_2.npy"]
    assert catalogue.scored == 2
    listed = {os.path.basename(r["path"]): r["reason"] for r in rows_of(tmp_path / "cat.skipped.csv")}
    assert catalogue.skipped_path == tmp_path / "cat.skipped.csv" and len(catalogue.skipped) == 5
    assert listed["nan.npy"] == "1 pixel(s) are NaN or infinite; clean or mask the image before use"
    assert listed["one_band.npy"].startswith("expected shape (C, H, W) with C=3 for this model, found C=1")
    assert listed["big.npy"].startswith("expected 8x8 pixels for this model, found 16x16")
    assert listed["truncated.npy"].startswith("unreadable or truncated .npy file")
    assert listed["empty.fits"].startswith("expected an image HDU of shape (H, W) or (C, H, W), found HDU 0: no data")

    with pytest.raises(InputError, match=r"big\.npy: expected 8x8 pixels.*\n\(--on-bad fail stops"):
        predict_catalog([folder], tmp_path / "stop.csv", run=model, on_bad="fail")
    assert not (tmp_path / "stop.csv").exists()
    with pytest.raises(InputError, match=r"(?s)nan\.npy: 1 pixel.*every one of the 2 cutouts was refused"):
        predict_catalog([folder / "nan.npy", folder / "one_band.npy"], tmp_path / "none.csv", run=model)
    with pytest.raises(InputError, match="--on-bad 'ignore': expected one of skip, fail"):
        predict_catalog([folder], tmp_path / "cat.csv", run=model, on_bad="ignore")
    # a later clean run of the same catalogue does not leave the earlier list of skipped cutouts beside it
    predict_catalog([folder / "good_1.npy"], tmp_path / "cat.csv", run=model)
    assert not (tmp_path / "cat.skipped.csv").exists()


def test_task_must_agree_with_the_run_and_bands_refuse_npy(tmp_path):
    from astropy.io import fits

    model = hand_set_model(tmp_path / "model.safetensors")
    np.save(tmp_path / "obj.npy", constant_cutout(1.0))
    with pytest.raises(InputError, match="--task substructure disagrees with --run .*model.safetensors, a lensfinding model"):
        predict_catalog([tmp_path / "obj.npy"], tmp_path / "cat.csv", run=model, task="substructure")
    assert len(rows_of(predict_catalog([tmp_path / "obj.npy"], tmp_path / "cat.csv", run=model, task="lensfinding"))) == 1
    bands = tmp_path / "bands"
    bands.mkdir()
    for band, value in zip("gri", (0.5, 1.0, 1.5)):
        fits.PrimaryHDU(np.full((8, 8), value, np.float32)).writeto(bands / f"obj7_{band}.fits")
    with pytest.raises(InputError, match=r"--bands reads one FITS file per band, but 1 input\(s\) are \.npy files \(first: .*obj\.npy\)"):
        predict_catalog([bands, tmp_path / "obj.npy"], tmp_path / "b.csv", run=model, band_suffixes=["g", "r", "i"])
    rows = rows_of(predict_catalog([bands], tmp_path / "b.csv", run=model, band_suffixes=["g", "r", "i"]))
    assert [r["path"] for r in rows] == [str(bands / "obj7")]  # keyed by the object, not by a band file
    assert float(rows[0]["score"]) == pytest.approx(GAIN * 1.0, rel=1e-6)  # the mean of the three bands


def test_predict_command_reports_what_it_skipped(tmp_path):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    model = hand_set_model(tmp_path / "model.safetensors")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    np.save(folder / "good.npy", constant_cutout(1.0))
    np.save(folder / "flat.npy", np.ones((3, 8, 4), np.float32))
    result = CliRunner().invoke(app, ["predict", str(folder), "--run", str(model), "--out", str(tmp_path / "cat.csv"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"predictions written to {tmp_path / 'cat.csv'} (1 cutout(s) scored)" in result.stdout
    assert f"1 cutout(s) skipped, listed with the reason in {tmp_path / 'cat.skipped.csv'}" in result.stderr
    result = CliRunner().invoke(app, ["predict", str(folder), "--run", str(model), "--out", str(tmp_path / "cat.csv"),
                                      "--no-progress", "--on-bad", "fail"])
    assert isinstance(result.exception, InputError) and "flat.npy: expected 8x8 pixels" in str(result.exception)
