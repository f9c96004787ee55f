"""Writers: layout, manifest, determinism across batch sizes, resume, atomicity, errors, CLI."""

import csv
import os

import numpy as np
import pytest
import yaml

from lensfinder.simulate import simulate_lensfinding, simulate_substructure
from lensfinder.simulate.presets import load_preset
from conftest import sigkill_part_way_then_resume

LF_COUNTS = {"train_lenses": 3, "train_nonlenses": 6, "test_lenses": 1, "test_nonlenses": 2}


def _manifest(path):
    """manifest.csv as columns: numeric columns as float arrays (empty cells NaN), the rest as str arrays."""
    rows = list(csv.DictReader(open(path)))
    cols = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        try:
            cols[key] = np.array([float(v) if v != "" else np.nan for v in values])
        except ValueError:
            cols[key] = np.array(values)
    return cols


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.npy"))


def _bytes(root):
    return {f: (root / f).read_bytes() for f in _files(root)}


@pytest.fixture(scope="module")
def sub_dirs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("sub_b3"), tmp_path_factory.mktemp("sub_b7")
    kw = dict(preset="deeplense-model-i", counts={"train": 3, "test": 1}, seed=4, progress=False)
    simulate_substructure(a, batch_size=3, **kw)
    simulate_substructure(b, batch_size=7, **kw)
    return a, b


def test_substructure_layout_shapes_and_manifest(sub_dirs):
    root = sub_dirs[0]
    files = _files(root)
    assert len(files) == 3 * (3 + 1)
    for cls in ("no", "sphere", "vort"):
        assert len(list((root / "train" / cls).glob("*.npy"))) == 3
    img = np.load(root / files[0])
    assert img.dtype == np.float32 and img.shape == (1, 150, 150)
    assert np.all(img >= 0) and img.max() > 100  # model-i: Poisson counts
    m = _manifest(root / "manifest.csv")
    assert len(m["id"]) == len(files) and len(set(m["id"])) == len(files)
    assert set(m["path"]) == set(files)
    assert list(m["id"]) == [p.rsplit("/", 1)[1][:-4] for p in m["path"]]
    for col in ("id", "path", "split", "label", "seed", "source_x_arcsec", "source_y_arcsec", "theta_e_arcsec",
                "n_subhalos", "subhalo_mass_total_msun", "subhalo_mass_median_msun", "axion_mass_ev",
                "vortex_half_length_arcsec", "vortex_angle_rad", "exposure_s"):
        assert col in m
    assert set(m["label"]) == {"no", "sphere", "vort"} and set(m["split"]) == {"train", "test"}
    assert (m["n_subhalos"][m["label"] == "sphere"] == 25).all()
    vort = m["label"] == "vort"
    np.testing.assert_allclose(m["vortex_half_length_arcsec"][vort], 0.03e-22 / m["axion_mass_ev"][vort], rtol=1e-9)
    assert np.isnan(m["axion_mass_ev"][m["label"] == "no"]).all()
    assert ((m["exposure_s"] >= 1e3) & (m["exposure_s"] <= 10**3.5)).all()
    cfg = yaml.safe_load((root / "simulation.yaml").read_text())
    assert cfg["preset"] == "deeplense-model-i" and cfg["seed"] == 4 and "versions" in cfg
    assert not list(root.rglob("*.tmp")) and not (root / ".manifest.jsonl").exists()


def test_same_seed_gives_identical_files_whatever_the_batch_size(sub_dirs):
    a, b = sub_dirs
    assert _bytes(a) == _bytes(b)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()


def test_other_seed_gives_other_images(tmp_path, sub_dirs):
    simulate_substructure(tmp_path, preset="deeplense-model-i", counts={"test": 1}, seed=5, progress=False)
    assert (tmp_path / "test/no/test_no_000000.npy").read_bytes() != (sub_dirs[0] / "test/no/test_no_000000.npy").read_bytes()


def test_resume_after_deleting_files_and_a_torn_journal(tmp_path, sub_dirs):
    ref = sub_dirs[0]
    kw = dict(preset="deeplense-model-i", counts={"train": 3, "test": 1}, seed=4, progress=False)
    simulate_substructure(tmp_path, batch_size=2, **kw)
    # an interrupted run: files lost, manifest gone, journal with a torn line
    for f in ("train/vort/train_vort_000001.npy", "test/no/test_no_000000.npy"):
        (tmp_path / f).unlink()
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / ".manifest.jsonl").write_text('{"id": "train_no_000000", "path": "train/no/train_no_0')
    simulate_substructure(tmp_path, batch_size=5, **kw)
    assert _bytes(tmp_path) == _bytes(ref)
    assert (tmp_path / "manifest.csv").read_bytes() == (ref / "manifest.csv").read_bytes()


def test_resume_skips_finished_objects_and_grows_counts(tmp_path):
    kw = dict(preset="deeplense-model-iii", seed=1, progress=False)
    simulate_substructure(tmp_path, counts={"train": 2}, **kw)
    before = {f: os.stat(tmp_path / f).st_mtime_ns for f in _files(tmp_path)}
    simulate_substructure(tmp_path, counts={"train": 3}, **kw)
    after = _files(tmp_path)
    assert len(after) == 9 and all(os.stat(tmp_path / f).st_mtime_ns == t for f, t in before.items())
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    with pytest.raises(ValueError, match="seed=1"):
        simulate_substructure(tmp_path, counts={"train": 3}, preset="deeplense-model-iii", seed=2, progress=False)


def test_noise_options_and_axion_pickle(tmp_path):
    out = simulate_substructure(tmp_path / "a", preset="deeplense-model-ii", counts={"val": 1}, progress=False,
                                axion_pickle=True)
    plain = np.load(out / "val/no/val_no_000000.npy")
    assert plain.shape == (1, 64, 64)
    obj = np.load(out / "val/vort/val_vort_000000.npy", allow_pickle=True)
    assert obj.dtype == object and obj[0].shape == (64, 64)
    m = _manifest(out / "manifest.csv")
    assert obj[1] == pytest.approx(m["axion_mass_ev"][m["label"] == "vort"][0], rel=1e-12)
    with pytest.raises(ValueError):
        np.load(out / "val/vort/val_vort_000000.npy")  # pickles are refused unless opted in
    noisy = simulate_substructure(tmp_path / "b", preset="deeplense-model-ii", counts={"val": 1}, noise=True,
                                  progress=False)
    img = np.load(noisy / "val/no/val_no_000000.npy")
    # published model-ii is 2 x model, noise-free; the noisy option is model + Euclid noise
    assert np.abs(img - plain / 2).max() > 0 and (img - plain / 2).std() < 0.2 * plain.max()


def test_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="known presets:.*deeplense-model-i"):
        simulate_substructure(tmp_path, preset="model-iv", counts={"train": 1})
    with pytest.raises(ValueError, match="non-negative integer"):
        simulate_substructure(tmp_path, preset="deeplense-model-i", counts={"train": -1})
    with pytest.raises(ValueError, match="unknown key 'training'"):
        simulate_substructure(tmp_path, preset="deeplense-model-i", counts={"training": 1})
    with pytest.raises(ValueError, match="substructure preset"):
        simulate_lensfinding(tmp_path, preset="deeplense-model-i", counts=LF_COUNTS)
    with pytest.raises(ValueError, match="distances"):
        simulate_substructure(tmp_path, preset="deeplense-model-i", counts={"train": 1}, distances="comoving")
    with pytest.raises(ValueError, match="workers: expected a positive integer"):
        simulate_lensfinding(tmp_path, counts=LF_COUNTS, workers=0)


def test_lensfinding_layout_counts_and_manifest(tmp_path):
    simulate_lensfinding(tmp_path / "a", counts=LF_COUNTS, seed=2, batch_size=3, progress=False)
    simulate_lensfinding(tmp_path / "b", counts=LF_COUNTS, seed=2, batch_size=7, progress=False)
    root = tmp_path / "a"
    for folder, n in LF_COUNTS.items():
        files = list((root / folder).glob("*.npy"))
        assert len(files) == n
        img = np.load(files[0])
        assert img.dtype == np.float32 and img.shape == (3, 64, 64)
    assert _bytes(root) == _bytes(tmp_path / "b")
    # two worker processes share the batches out: the same files and the same manifest
    simulate_lensfinding(tmp_path / "c", counts=LF_COUNTS, seed=2, batch_size=2, progress=False, workers=2)
    assert _bytes(root) == _bytes(tmp_path / "c")
    assert (root / "manifest.csv").read_text() == (tmp_path / "c" / "manifest.csv").read_text()
    m = _manifest(root / "manifest.csv")
    for col in ("id", "path", "split", "label", "seed", "theta_e_arcsec", "source_mag_i", "magnification", "arc_snr",
                "deflector_mag_i", "deflector_type", "confuser_kind", "n_neighbours", "n_stars", "shear_gamma"):
        assert col in m
    assert (m["label"] == "lens").sum() == 4 and (m["label"] == "nonlens").sum() == 8
    lens = m["label"] == "lens"

    def between(values, lo, hi):
        return bool(((values >= lo) & (values <= hi)).all())

    cfg = load_preset("lsst-gri")
    theta_lo = min(cfg["theta_e_arcsec"][0], cfg["group"]["theta_e_arcsec"][0])
    theta_hi = max(cfg["theta_e_arcsec"][1], cfg["group"]["theta_e_arcsec"][1])
    assert between(m["theta_e_arcsec"][lens], theta_lo, theta_hi)
    assert between(m["source_mag_i"][lens], min(cfg["source"]["mag_i"][0], cfg["quasar"]["mag_i"][0]), cfg["source"]["mag_i"][1])
    assert (m["magnification"][lens] > 1).all() and (m["arc_snr"][lens] > 0).all()
    assert between(m["deflector_mag_i"], *cfg["central_mag_i"])
    assert between(m["seeing_scale"], *cfg["observing"]["seeing_scale"])


def test_default_counts_are_the_published_ones(tmp_path, monkeypatch):
    """Without counts, the writer lays out the report's published set: 1,730 / 28,675 training and 195 / 19,455
    test lenses / non-lenses (the jobs are captured before anything renders)."""
    from lensfinder.simulate import writer

    captured = {}
    monkeypatch.setattr(writer, "_run", lambda out_dir, jobs, **kw: captured.setdefault("jobs", jobs))
    simulate_lensfinding(tmp_path, progress=False)
    per_folder = {}
    for job in captured["jobs"]:
        per_folder[job["folder"]] = per_folder.get(job["folder"], 0) + 1
    assert per_folder == {"train_lenses": 1730, "train_nonlenses": 28675, "test_lenses": 195, "test_nonlenses": 19455}


def test_simulate_killed_with_sigkill_resumes_to_the_same_bytes(tmp_path):
    """A real SIGKILL in the middle of `lensfinder simulate`, then the same command again: the files are
    byte-identical to an uninterrupted run's, and the manifest too."""
    import subprocess
    import sys

    def command(out):
        return [sys.executable, "-m", "lensfinder", "simulate", "lensfinding", "--out", str(out), "--seed", "3",
                "--train-lenses", "0", "--train-nonlenses", "0", "--test-lenses", "30", "--test-nonlenses", "120",
                "--batch-size", "8", "--workers", "1"]

    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    sigkill_part_way_then_resume(command, killed, pattern="test_*/*.npy", at_least=20, total=150)
    assert _bytes(killed) == _bytes(tmp_path / "whole")  # the killed writer's temporaries are gone too
    assert not list(killed.rglob(".*"))


def test_cli_runs_once_and_rejects_bad_arguments(tmp_path):
    from typer.testing import CliRunner

    from lensfinder.simulate.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["lensfinding", "--out", str(tmp_path), "--train-lenses", "1", "--train-nonlenses", "1",
                             "--test-lenses", "0", "--test-nonlenses", "0", "--batch-size", "2"])
    assert ok.exit_code == 0, ok.output
    assert len(_files(tmp_path)) == 2
    bad = runner.invoke(app, ["substructure", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "known presets" in bad.output and "Traceback" not in bad.output
    neg = runner.invoke(app, ["substructure", "--train", "-3", "--out", str(tmp_path / "y")])
    assert neg.exit_code == 2 and "non-negative" in neg.output
