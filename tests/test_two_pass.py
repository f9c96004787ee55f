"""Two-pass scoring (--tta top, the lens finders' default): every object scored with one view, the best-scored
--rescore-top share re-scored with the 8 D4 views. Only that share gets 8 views; its scores are the 8-view scores,
the others the 1-view scores, and the catalogue's `views` column says which, in the array, folder and survey paths;
the survey's second pass resumes after a SIGKILL without re-scoring its parts."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import lensfinder
from lensfinder.cli import app
from lensfinder.evaluate.inference import (DEFAULT_RESCORE_MIN, DEFAULT_RESCORE_TOP, TTA_MODES, rescore_count,
                                           top_indices, tta_plan, view_logits)
from lensfinder.evaluate.predict import predict_catalog
from lensfinder.metrics import log_odds
from lensfinder.survey.engine import predict_survey
from lensfinder.survey.merge import merge_parts, read_selection
from lensfinder.train.module import LensModule
from lensfinder.train.run import export_model, load_model
from lensfinder.validation import InputError

SIZE = 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_model(path=None, *, tta=True, num_classes=2, normalization=None):
    """A random report-cnn3 on 3 x 16 x 16 cutouts: not D4-invariant, so its 8-view scores differ from its 1-view ones."""
    torch.manual_seed(0)
    names = ["nonlens", "lens"] if num_classes == 2 else ["no", "sphere", "vort"]
    module = LensModule(task="lensfinding" if num_classes == 2 else "substructure", model_name="report-cnn3",
                        in_channels=3, num_classes=num_classes, image_size=SIZE, class_names=names,
                        normalization=normalization or {"kind": "none"}, class_weights=None, lr=1e-3,
                        weight_decay=0.0, scheduler="plateau", augment=False, tta=tta, preset="lsst-gri")
    module.eval()
    if path is not None:
        export_model(module, path)
    return module


def images(n, seed=1):
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_the_plan_follows_the_model_and_the_flags():
    lens, multi, plain = make_model().hparams, make_model(num_classes=3).hparams, make_model(tta=False).hparams
    assert DEFAULT_RESCORE_TOP == 0.01 and DEFAULT_RESCORE_MIN == 1000 and TTA_MODES == ("top", "all", "none")
    assert tta_plan(lens) == ("top", 0.01)  # trained with averaging, binary: two passes
    assert tta_plan(multi) == ("all", 0.0)  # substructure: every object averaged
    assert tta_plan(plain) == ("none", 0.0)  # trained without: one view
    assert tta_plan(lens, True) == ("all", 0.0) and tta_plan(lens, False) == ("none", 0.0)
    assert tta_plan(plain, "top", 0.05) == ("top", 0.05)
    assert tta_plan(lens, "top", 0.0) == ("none", 0.0) and tta_plan(lens, "top", 1.0) == ("all", 0.0)
    with pytest.raises(InputError, match="--tta 'some'.*top, all, none"):
        tta_plan(lens, "some")
    with pytest.raises(InputError, match="--rescore-top 1.5"):
        tta_plan(lens, "top", 1.5)
    with pytest.raises(InputError, match="--rescore-min -1"):
        tta_plan(lens, "top", 0.01, -1)
    # the share, at least the minimum (1,000 by default), at most all
    assert rescore_count(19650, 0.01) == 1000 and rescore_count(10**8, 0.01) == 10**6 and rescore_count(600, 0.01) == 600
    assert rescore_count(19650, 0.01, 0) == 197 and rescore_count(100, 0.07, 0) == 7 and rescore_count(5, 0.01, 0) == 1
    assert rescore_count(0, 0.01) == 0 and rescore_count(10, 0.0) == 0
    assert list(top_indices(np.array([1.0, 3.0, 3.0, 2.0]), 3)) == [1, 2, 3]  # ties in index order


def test_views_are_taken_of_the_normalised_image_as_predict_logits_takes_them():
    """The image is normalised once and its views taken after: the same numbers as normalising every view."""
    module = make_model(normalization={"kind": "asinh", "mean": None, "std": None, "softening": 1.0,
                                       "peak_floor": 1e-6}).for_inference()
    x = torch.from_numpy(images(24) - 0.3)
    for tta, views in ((True, 8), (False, 1)):
        np.testing.assert_array_equal(view_logits(module, x, views=views).numpy(),
                                      module.predict_logits(x, tta=tta).numpy())


def _by_id(table):
    return {row["id"]: row for row in table}


def test_the_array_path_rescores_only_the_top_share_with_8_views():
    model, x = make_model(), images(60)
    one = lensfinder.predict(model, x, tta="none").set_index("id")
    eight = lensfinder.predict(model, x, tta="all").set_index("id")
    two = lensfinder.predict(model, x, rescore_top=0.1, rescore_min=0).set_index("id")  # the default mode: top
    assert two.attrs["tta"] == "top" and two.attrs["rescore_top"] == 0.1 and two.attrs["rescore_min"] == 0
    assert set(one["views"]) == {1} and set(eight["views"]) == {8}
    top = set(one.sort_values("score", ascending=False, kind="stable").index[:6])  # ceil(0.1 x 60)
    assert set(two.index[two["views"] == 8]) == top and (two["views"] == 1).sum() == 54
    for i in two.index:
        expected = eight if i in top else one
        np.testing.assert_allclose(two.loc[i, "score"], expected.loc[i, "score"], rtol=1e-6, atol=1e-6)
        if i not in top:
            assert two.loc[i, "score"] == one.loc[i, "score"]  # the same first pass, bit for bit
    assert two["score"].is_monotonic_decreasing  # ranked by the final scores
    assert not np.allclose(one.loc[list(top), "score"], eight.loc[list(top), "score"])  # the views changed them
    # the minimum: a share of 1 % of 60 is one object, but at least 10 are re-scored; by default (1,000) all 60
    assert (lensfinder.predict(model, x, rescore_min=10)["views"] == 8).sum() == 10
    assert set(lensfinder.predict(model, x)["views"]) == {8}


def test_the_folder_path_rescores_the_top_share_and_flags_it(tmp_path):
    model = make_model(tmp_path / "model.safetensors")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i, image in enumerate(images(40)):
        np.save(folder / f"obj_{i:02d}.npy", image)

    def rows(name, **options):
        catalogue = predict_catalog([folder], tmp_path / name, run=tmp_path / "model.safetensors", batch_size=8,
                                    device="cpu", **options)
        with open(catalogue, newline="") as handle:
            return {r["path"]: r for r in csv.DictReader(handle)}

    one, eight = rows("one.csv", tta="none"), rows("eight.csv", tta=True)
    two = rows("two.csv", rescore_top=0.05, rescore_min=0)  # ceil(0.05 x 40) = 2
    top = sorted(one, key=lambda k: -float(one[k]["score"]))[:2]
    assert sorted(k for k, r in two.items() if r["views"] == "8") == sorted(top)
    for key, row in two.items():
        expected = eight if key in top else one
        assert float(row["score"]) == pytest.approx(float(expected[key]["score"]), rel=1e-6, abs=1e-6)
    meta = json.loads((tmp_path / "two.meta.json").read_text())
    assert meta["tta"] == "top" and meta["rescore_top"] == 0.05 and meta["rescored"] == 2

    result = CliRunner().invoke(app, ["predict", str(folder), "--run", str(tmp_path / "model.safetensors"), "--out",
                                      str(tmp_path / "cli.csv"), "--no-tta", "--tta", "all", "--no-progress"])
    assert result.exit_code != 0 and "--no-tta and --tta all" in str(result.exception)


def write_cube(path, x):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=x, chunks=(8, *x.shape[1:]))
        handle["id"] = np.array([f"obj{i:04d}" for i in range(len(x))], dtype=h5py.string_dtype())
        handle["ra"], handle["dec"] = np.linspace(10, 11, len(x)), np.linspace(-1, 1, len(x))
    return path


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_pass")
    make_model(root / "model.safetensors")
    return {"root": root, "cube": write_cube(root / "cube.h5", images(600))}


def _survey(cube, name, **options):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below run: small batches' float32 sums depend on the threads
    try:
        return predict_survey([cube["cube"]], cube["root"] / name, run=cube["root"] / "model.safetensors",
                              batch_size=40, accelerator="cpu", devices=1, **{"rescore_min": 0, **options})
    finally:
        torch.set_num_threads(threads)


def test_the_survey_rescores_the_top_share_from_the_source_and_merges_it(cube):
    one = _by_id(pq.read_table(_survey(cube, "one.parquet", tta="none", chunk_rows=40).merged.path).to_pylist())
    eight = _by_id(pq.read_table(_survey(cube, "eight.parquet", tta="all", chunk_rows=40).merged.path).to_pylist())
    run = _survey(cube, "two.parquet", rescore_top=0.05, chunk_rows=40)
    assert run.tta == "top" and run.rescored == 30 and run.rescore_written == 6  # ceil(0.05 x 600), 40 // 8 rows a part
    two = pq.read_table(run.merged.path).to_pylist()
    assert [r["rank"] for r in two] == list(range(1, 601)) and [r["score"] for r in two] == sorted(
        (r["score"] for r in two), reverse=True)
    top = [r["id"] for r in sorted(one.values(), key=lambda r: (-r["score"], r["row"]))[:30]]
    assert sorted(r["id"] for r in two if r["views"] == 8) == sorted(top)
    rows, record = read_selection(run.parts)
    assert sorted(rows) == sorted(one[i]["row"] for i in top) and record["k"] == 30 and record["scored"] == 600
    for row in two:
        expected = eight if row["id"] in top else one
        assert row["score"] == pytest.approx(expected[row["id"]]["score"], rel=1e-6, abs=1e-6)
        assert row["p_lens"] == pytest.approx(expected[row["id"]]["p_lens"], rel=1e-6, abs=1e-6)
        assert row["predicted"] == expected[row["id"]]["predicted"] and row["ra"] == one[row["id"]]["ra"]
        if row["id"] not in top:
            assert row["score"] == one[row["id"]]["score"]  # the same first pass, bit for bit

    # a missing rescore part: merge refuses and says how to finish; the same call writes only that part again
    first = run.parts / "rescore-000000.parquet"
    kept = {p.name: p.stat().st_mtime_ns for p in run.parts.glob("*.parquet") if p != first}
    first.unlink()
    with pytest.raises(InputError, match="not re-scored with the 8 D4 views yet.*without --shard"):
        merge_parts(run.parts, cube["root"] / "again.parquet")
    again = _survey(cube, "two.parquet", rescore_top=0.05, chunk_rows=40)
    assert (again.written, again.done_before, again.rescore_written) == (0, 15, 1)
    assert {p.name: p.stat().st_mtime_ns for p in run.parts.glob("*.parquet") if p != first} == kept
    assert pq.read_table(again.merged.path).to_pylist() == two
    with pytest.raises(InputError, match="rescore_top: parts 0.05, now 0.1"):
        _survey(cube, "two.parquet", rescore_top=0.1, chunk_rows=40)
    floor = _survey(cube, "floor.parquet", rescore_top=0.01, rescore_min=50, chunk_rows=40)  # 1 % of 600 is 6
    assert floor.rescored == 50 and read_selection(floor.parts)[1]["minimum"] == 50


def test_a_shard_scores_the_first_pass_and_the_unsharded_command_finishes_it(cube):
    parts = cube["root"] / "sharded.parquet.parts"
    for k in range(3):
        result = _survey(cube, "sharded.parquet", rescore_top=0.05, chunk_rows=40, shard=(k, 3))
        assert result.merged is None and result.rescored == 0
    with pytest.raises(InputError, match="not re-scored"):
        merge_parts(parts, cube["root"] / "sharded.parquet")
    done = _survey(cube, "sharded.parquet", rescore_top=0.05, chunk_rows=40)
    assert (done.written, done.done_before, done.rescore_written) == (0, 15, 6)
    assert pq.read_table(done.merged.path).to_pylist() == pq.read_table(cube["root"] / "two.parquet").to_pylist()


def _command(cube, out, *extra):
    return [sys.executable, "-m", "lensfinder", "predict", str(cube["cube"]), "--run", str(cube["root"] / "model.safetensors"),
            "--out", str(out), "--chunk-size", "8", "--batch-size", "40", "--rescore-top", "0.5", "--rescore-min", "0",
            "--no-progress",
            "--accelerator", "cpu", *extra]


@pytest.fixture(scope="module")
def half(cube):
    """The uninterrupted one-process catalogue of the commands below, made in this process (one thread, like them)."""
    return pq.read_table(_survey(cube, "half.parquet", rescore_top=0.5, chunk_rows=8).merged.path).to_pylist()


def test_a_second_pass_killed_with_sigkill_resumes_where_it_stopped(cube, half, tmp_path):
    """chunk 8: the second pass writes 300 parts of one row each (8 // 8); killed after its first, it resumes."""
    out, parts = tmp_path / "catalogue.parquet", tmp_path / "catalogue.parquet.parts"
    process = subprocess.Popen(_command(cube, out, "--devices", "1"), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not list(parts.glob("rescore-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("rescore-*.parquet")}
    assert 0 < len(kept) < 300, f"killed in the second pass? {stderr.decode()[-2000:]}"
    assert len(list(parts.glob("part-*.parquet"))) == 75 and (parts / "rescore.parquet").is_file()
    assert not out.exists() and not list(parts.glob(".*tmp*"))

    result = subprocess.run(_command(cube, out, "--devices", "1"), env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"0 chunk(s) scored now, 75 before; the top 300 re-scored with 8 views ({300 - len(kept)} part(s) now)" \
        in result.stdout
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in ((n, parts / n) for n in kept)} == kept
    assert pq.read_table(out).to_pylist() == half


def test_two_ddp_processes_run_a_second_pass_that_a_first_run_left(cube, half, tmp_path):
    """The first pass written by one process; two DDP processes (Lightning starts the second at the second pass)
    share the rescore parts and give the one-process catalogue."""
    out = tmp_path / "ddp.parquet"
    first = subprocess.run(_command(cube, out, "--devices", "1", "--shard", "0/1"), env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0 and "once every shard has run" in first.stdout, first.stderr[-3000:]
    result = subprocess.run(_command(cube, out, "--devices", "2", "--strategy", "ddp"), env=ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr and "75 before; the top 300 re-scored" in result.stdout
    assert len(list((tmp_path / "ddp.parquet.parts").glob("rescore-*.parquet"))) == 300
    assert pq.read_table(out).to_pylist() == half
