"""The demo job end to end, on a scale small enough for CI."""

import json

from lensfinder import demo


def test_demo_compares_baselines_and_defaults(tmp_path, monkeypatch):
    tiny = {
        "substructure": {"preset": "deeplense-model-iii", "counts": {"train": 6, "val": 3, "test": 3},
                         "epochs": {"baseline": 1, "default": 1}},
        "lensfinding": {"preset": "lsst-gri", "counts": {"train_lenses": 4, "train_nonlenses": 16,
                                                         "test_lenses": 2, "test_nonlenses": 10},
                        "epochs": {"baseline": 1, "default": 1}},
    }
    monkeypatch.setitem(demo.SCALES, "tiny", tiny)
    report = demo.run_demo(tmp_path / "demo", scale="tiny", progress=False)
    html = report.read_text()
    for model in ("report-cnn4", "report-cnn3", demo.DEFAULT_MODELS["substructure"], demo.DEFAULT_MODELS["lensfinding"]):
        assert model in html
    assert html.count("shipped weights") == 2 * 2  # one table row and one figure heading per task
    runs = sorted(p.name for p in (tmp_path / "demo" / "runs").iterdir())
    assert len(runs) == 6 and all((tmp_path / "demo" / "runs" / r / "metrics.json").exists() for r in runs)
    shipped = json.loads((tmp_path / "demo" / "runs" / "lensfinding-shipped-resnet-s" / "metrics.json").read_text())["test"]
    assert shipped["n"] == 12 and shipped["tta"] is True  # the shipped model, scored on the demo's own test split
    assert (tmp_path / "demo" / "timings.txt").read_text().count("\n") == 8
    # Running again resumes: finished runs and data are reused, not refused.
    demo.run_demo(tmp_path / "demo", scale="tiny", progress=False)
