"""The grading web app: the HTTP API (Flask's test client and real servers on free ports), the grades database
under two servers, the results (classes, kappas checked against values worked out by hand, the table in three
formats, the gallery, the labelled folder), and the page itself in Debian's chromium driven by Selenium."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lensfinder.cli import app as cli_app
from lensfinder.data.layouts import discover
from lensfinder.inspect import render, results
from lensfinder.inspect.catalogue import read_catalogue
from lensfinder.inspect.db import GradesDB
from lensfinder.inspect.server import create_app, make_server
from lensfinder.validation import InputError

REPO = Path(__file__).resolve().parents[1]
FIGURES = Path(os.environ["LENSFINDER_SCREENSHOTS"]) if os.environ.get("LENSFINDER_SCREENSHOTS") else None
BROWSER_PACKAGES = "apt-get install -y chromium chromium-driver (Debian) and pip install selenium"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """20 simulated cutouts ranked by the shipped weights, plus two bad rows at the end: a missing file and a
    corrupt .npy."""
    from lensfinder.evaluate.predict import predict_catalog
    from lensfinder.simulate import simulate_lensfinding

    root = tmp_path_factory.mktemp("inspect")
    sim = simulate_lensfinding(root / "sim", counts={"train_lenses": 0, "train_nonlenses": 0, "test_lenses": 4,
                                                     "test_nonlenses": 16}, progress=False)
    ranked = predict_catalog([sim], root / "candidates.csv", task="lensfinding")
    corrupt = root / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY not really")
    with open(ranked.path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows += [[21, str(root / "gone.npy"), 0.5, 0.5, -30.0, "nonlens", 1], [22, str(corrupt), 0.5, 0.5, -31.0, "nonlens", 1]]
    with open(ranked.path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return ranked.path


@pytest.fixture()
def client(catalogue, tmp_path):
    db = GradesDB(tmp_path / "grades.sqlite")
    return create_app(read_catalogue(catalogue), db, default_grader="alice").test_client(), db


def _objects(catalogue: Path) -> list[str]:
    with open(catalogue, newline="") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


# HTTP API ---------------------------------------------------------------------------------------------------------

def test_grade_upsert_undo_and_resume(client, catalogue):
    http, db = client
    first, second = _objects(catalogue)[:2]
    assert http.post("/api/grade", json={"object": first, "grade": 2, "comment": "arc?"}).status_code == 200
    reply = http.post("/api/grade", json={"object": first, "grade": 3, "comment": "clear arc"}).get_json()
    assert (reply["grade"], reply["comment"], reply["progress"]["graded"]) == (3, "clear arc", 1)
    http.post("/api/grade", json={"object": second, "grade": 0})
    rows = {(g.object, g.grader): (g.grade, g.comment, g.rank) for g in db.grades()}
    assert rows == {(first, "alice"): (3, "clear arc", 1), (second, "alice"): (0, "", 2)}  # one row per (object, grader)
    assert http.get("/api/resume").get_json()["index"] == 2  # just after the last graded
    assert http.get("/api/resume?grader=bob").get_json()["index"] == 0  # a new grader starts at the top
    undone = http.post("/api/undo", json={}).get_json()
    assert (undone["object"], undone["index"], undone["grade"]) == (second, 1, None)
    undone = http.post("/api/undo", json={}).get_json()  # back to the first grade of `first`, comment included
    assert (undone["object"], undone["grade"], undone["comment"]) == (first, 2, "arc?")
    assert http.post("/api/undo", json={}).get_json()["grade"] is None
    assert http.post("/api/undo", json={}).get_json()["object"] is None
    assert db.grades() == []
    page = http.get("/api/items?start=0&count=5&grader=bob").get_json()
    assert [item["rank"] for item in page["items"]] == [1, 2, 3, 4, 5]
    assert page["progress"] == {"graded": 0, "total": 22, "graded_by_anyone": 0}


def test_bad_requests_are_refused_with_a_message(client, catalogue):
    http, db = client
    first = _objects(catalogue)[0]
    reply = http.post("/api/grade", json={"object": "/elsewhere/x.npy", "grade": 3})
    assert reply.status_code == 404 and "unknown object" in reply.get_json()["error"]
    reply = http.post("/api/grade", json={"object": first, "grade": 4})
    assert reply.status_code == 400 and "0 (not a lens)" in reply.get_json()["error"]
    assert http.post("/api/grade", json={"object": first, "grade": True}).status_code == 400
    assert http.post("/api/grade", json={"object": first, "grade": 1, "grader": "a\x00b"}).status_code == 400
    assert http.post("/api/grade", data="not json").status_code == 400
    assert http.get("/api/items?count=0").status_code == 400
    assert http.get("/img/99/composite.png").status_code == 404
    assert http.get("/img/0/composite.png?stretch=-1").status_code == 400
    assert db.grades() == []
    bare = create_app(read_catalogue(catalogue), db).test_client()  # no --grader: the request must name one
    assert "grader" in bare.get("/api/resume").get_json()["error"]


def test_missing_and_unreadable_cutouts_show_the_reason(client):
    http, _ = client
    items = http.get("/api/items?start=20&count=5").get_json()["items"]
    assert [i["rank"] for i in items] == [21, 22]
    assert "gone.npy: cutout file not found" in items[0]["problem"]
    assert "corrupt.npy: unreadable or truncated .npy" in items[1]["problem"]
    reply = http.get("/img/20/composite.png")
    assert reply.status_code == 404 and "not found" in reply.get_json()["error"]
    assert http.get("/api/items?start=0&count=20").get_json()["items"][0]["problem"] is None


def test_images_and_metadata(client, catalogue):
    from matplotlib.image import imread

    http, _ = client
    reply = http.get("/img/0/composite.png")
    assert reply.status_code == 200 and reply.mimetype == "image/png"
    pixels = imread(io.BytesIO(reply.data))
    assert pixels.shape[:2] == (64, 64) and pixels.std() > 0
    darker = imread(io.BytesIO(http.get("/img/0/composite.png?stretch=10").data))
    assert darker.mean() < pixels.mean()  # a larger linear range is a darker image
    for view in ("band.png?band=2", "residual.png?band=1", "difference.png"):
        assert imread(io.BytesIO(http.get(f"/img/0/{view}").data)).shape[:2] == (64, 64)
    assert http.get("/img/0/band.png?band=3").status_code == 404  # three bands: 0, 1, 2
    detail = http.get("/api/item/0").get_json()
    assert detail["bands"] == ["g", "r", "i"] and detail["shape"] == [3, 64, 64]
    manifest = {row["path"]: row for row in csv.DictReader(open(Path(_objects(catalogue)[0]).parents[1] / "manifest.csv"))}
    relative = "/".join(Path(detail["object"]).parts[-2:])
    assert detail["metadata"]["theta_e_arcsec"] == manifest[relative]["theta_e_arcsec"]
    assert http.get("/api/item/20").get_json()["metadata"] == {}


def test_one_fits_file_per_band(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(1)
    (tmp_path / "cutouts").mkdir()
    for k, band in enumerate("irg"):  # written out of order: shown as g, r, i
        fits.PrimaryHDU(rng.normal(k, 1, (32, 32)).astype(np.float32)).writeto(tmp_path / "cutouts" / f"obj_{band}.fits")
    (tmp_path / "cat.csv").write_text("rank,path,p_nonlens,p_lens,score,predicted\n1,cutouts/obj,0.1,0.9,2.2,lens\n")
    http = create_app(read_catalogue(tmp_path / "cat.csv"), GradesDB(tmp_path / "g.sqlite"), default_grader="a").test_client()
    detail = http.get("/api/item/0").get_json()
    assert detail["problem"] is None and detail["bands"] == ["g", "r", "i"] and detail["shape"] == [3, 32, 32]
    assert http.get("/img/0/composite.png").status_code == 200


def test_composite_puts_i_in_red_and_g_in_blue():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (3, 32, 32))
    image[2, 12:20, 12:20] += 200  # a source only in i
    image[0, 2:6, 2:6] += 200  # another only in g
    rgb = render.composite(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    red_source, blue_source = rgb[14:18, 14:18].mean((0, 1)), rgb[3:5, 3:5].mean((0, 1))
    assert red_source[0] > 200 and red_source[2] < 30
    assert blue_source[2] > 200 and blue_source[0] < 30
    grey = render.composite(image[:1])  # one band: grey
    assert np.array_equal(grey[..., 0], grey[..., 2])
    res = render.residual(image[1])  # the sky is white, +/- go to red / blue
    assert abs(int(res[16, 16, 0]) - int(res[16, 16, 2])) < 40


def test_two_servers_one_database_and_a_killed_cli_server_loses_nothing(catalogue, tmp_path):
    objects = _objects(catalogue)[:20]
    db_path = tmp_path / "shared.sqlite"
    servers = [make_server(catalogue, db=db_path, port=0) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()

    def grade_all(port: int, grader: str, offset: int) -> None:
        for k, obj in enumerate(objects):
            _post(f"http://127.0.0.1:{port}/api/grade", {"object": obj, "grader": grader, "grade": (k + offset) % 4})

    try:
        assert servers[0].server_address[0] == "127.0.0.1"  # localhost unless --host says otherwise
        writers = [threading.Thread(target=grade_all, args=(servers[k % 2].server_port, f"g{k}", k)) for k in range(4)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    db = GradesDB(db_path)
    assert db.integrity() == "ok"
    got = {(g.object, g.grader): g.grade for g in db.grades()}
    assert got == {(obj, f"g{k}"): (i + k) % 4 for k in range(4) for i, obj in enumerate(objects)}
    assert sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # the CLI's server, killed without warning: every grade it acknowledged is in the file
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cli_db = tmp_path / "cli.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "lensfinder", "inspect", str(catalogue), "--port", "0",
                                "--db", str(cli_db), "--grader", "carol"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        for line in process.stdout:
            if line.startswith("open http://"):
                url = line.split()[1].split("?")[0]
                break
        assert url is not None and url.startswith("http://127.0.0.1:")
        for k, obj in enumerate(objects[:5]):
            _post(url + "api/grade", {"object": obj, "grade": k % 4, "comment": f"c{k}"})
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    kept = {g.object: (g.grade, g.comment) for g in GradesDB(cli_db).grades(grader="carol")}
    assert kept == {obj: (k % 4, f"c{k}") for k, obj in enumerate(objects[:5])}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def test_port_in_use_and_bad_catalogues_are_input_errors(catalogue, tmp_path):
    server = make_server(catalogue, db=tmp_path / "a.sqlite", port=0)
    try:
        with pytest.raises(InputError, match="another --port"):
            make_server(catalogue, db=tmp_path / "a.sqlite", port=server.server_port)
    finally:
        server.server_close()
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="expected the columns of `lensfinder predict`"):
        read_catalogue(tmp_path / "plain.csv")
    (tmp_path / "x.txt").write_text("rank,path,score\n")
    with pytest.raises(InputError, match="unsupported catalogue type"):
        read_catalogue(tmp_path / "x.txt")
    (tmp_path / "other.sqlite").write_bytes(b"this is not a database, just bytes" * 40)
    with pytest.raises(InputError, match="not a readable SQLite database"):
        GradesDB(tmp_path / "other.sqlite")


# Results ----------------------------------------------------------------------------------------------------------

def test_holismokes_classes_at_the_edges():
    cases = {3.0: "A", 2.51: "A", 2.5: "B", 1.51: "B", 1.5: "C", 0.51: "C", 0.5: "not a lens", 0.0: "not a lens"}
    assert {g: results.holismokes_class(g) for g in cases} == cases


def test_kappas_against_hand_computed_values():
    # Cohen, by hand: agreement on 7 of 10, chance 0.2*0.3 + 0.2*0.2 + 0.4*0.4 + 0.2*0.1 = 0.28,
    # kappa = (0.7 - 0.28) / (1 - 0.28) = 7/12
    a = [0, 1, 2, 3, 3, 2, 1, 0, 2, 2]
    b = [0, 1, 2, 2, 3, 2, 0, 0, 2, 1]
    assert results.cohen_kappa(a, b) == pytest.approx(7 / 12, abs=1e-12)
    assert results.cohen_kappa(a, a) == pytest.approx(1.0)
    assert np.isnan(results.cohen_kappa([2, 2], [2, 2]))  # chance agreement 1: undefined
    # Fleiss (1971) as worked on Wikipedia's page: 10 subjects, 14 raters, 5 categories: P_bar = 0.37802,
    # P_e = 0.21275, kappa = 0.20993
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
             [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert results.fleiss_kappa(np.array(table)) == pytest.approx(0.20993, abs=5e-5)


def _graded_db(path: Path, objects: list[str]) -> GradesDB:
    """Three graders on three objects: alice 3, 2, 0; bob 3, 2, 0; carol 3, 1, 1.
    Per object: P = 1, 1/3, 1/3, P_bar = 5/9; shares 2/9, 2/9, 2/9, 3/9, P_e = 21/81; Fleiss = 0.4.
    Cohen: alice/bob 1; alice/carol: p_o 1/3, p_e 1/9, kappa 0.25. Means 3 (A), 5/3 (B), 1/3 (not a lens)."""
    db = GradesDB(path)
    for grader, grades in {"alice": (3, 2, 0), "bob": (3, 2, 0), "carol": (3, 1, 1)}.items():
        for rank, (obj, grade) in enumerate(zip(objects, grades), start=1):
            db.set_grade(obj, grader, grade, "nice arc" if grader == "carol" and rank == 1 else "", rank=rank,
                         score=10.0 - rank, catalogue=None)
    return db


def test_agreement_and_table_in_three_formats(catalogue, tmp_path):
    objects = _objects(catalogue)[:3]
    _graded_db(tmp_path / "g.sqlite", objects)
    graded = results.load_objects(tmp_path / "g.sqlite")
    report = results.agreement(graded)
    assert report["fleiss_kappa"] == pytest.approx(0.4) and report["fleiss_n_objects"] == 3
    pairs = {tuple(p["graders"]): p["cohen_kappa"] for p in report["pairwise"]}
    assert pairs[("alice", "bob")] == pytest.approx(1.0) and pairs[("alice", "carol")] == pytest.approx(0.25)
    assert report["classes"] == {"A": 1, "B": 1, "C": 0, "not a lens": 1}
    from astropy.table import Table
    import pyarrow.parquet as pq

    results.write_table(graded, tmp_path / "t.csv")
    results.write_table(graded, tmp_path / "t.fits")
    results.write_table(graded, tmp_path / "t.parquet")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    fits, parquet = Table.read(tmp_path / "t.fits"), pq.read_table(tmp_path / "t.parquet").to_pydict()
    for table in (rows, [dict(zip(fits.colnames, r)) for r in fits], [dict(zip(parquet, r)) for r in zip(*parquet.values())]):
        assert [str(r["class"]) for r in table] == ["A", "B", "not a lens"]
        assert [float(r["mean_grade"]) for r in table] == pytest.approx([3, 5 / 3, 1 / 3])
        assert [float(r["grade_std"]) for r in table] == pytest.approx([0, np.std([2, 2, 1]), np.std([0, 0, 1])])
        assert [int(r["n_graders"]) for r in table] == [3, 3, 3]
    assert rows[0]["comments"] == "carol: nice arc" and rows[1]["grades"] == "alice:2;bob:2;carol:1"
    with pytest.raises(InputError, match=r"expected one of \.csv, \.fits, \.parquet"):
        results.write_table(graded, tmp_path / "t.xlsx")


def test_grades_cli_gallery_and_labelled_folder(catalogue, tmp_path):
    from typer.testing import CliRunner

    objects = _objects(catalogue)
    db = _graded_db(tmp_path / "g.sqlite", objects[:3])
    for k, obj in enumerate(objects[3:6]):  # three more graded not a lens, with the catalogue to resolve paths
        db.set_grade(obj, "alice", 0, rank=4 + k, score=0.0, catalogue=str(catalogue))
    db.set_grade(objects[20], "alice", 0, rank=21, score=-30.0, catalogue=str(catalogue))  # its cutout is gone
    runner = CliRunner()
    result = runner.invoke(cli_app, ["grades", str(tmp_path / "g.sqlite"), "--out", str(tmp_path / "graded.parquet"),
                                     "--gallery", str(tmp_path / "gallery.html"),
                                     "--labelled-folder", str(tmp_path / "labelled")])
    assert result.exit_code == 0, result.output
    assert "Fleiss' kappa 0.400" in result.output and "1 A, 1 B, 0 C, 5 not a lens" in result.output
    assert "left out: " in result.output and "gone.npy: cutout file not found" in result.output
    assert json.loads((tmp_path / "graded.agreement.json").read_text())["fleiss_kappa"] == pytest.approx(0.4)
    page = (tmp_path / "gallery.html").read_text()
    assert page.count("<figure") == 2 and page.count('src="data:image/png;base64,') == 2
    assert Path(objects[0]).name in page and Path(objects[2]).name not in page and "nice arc" in page
    splits = discover(tmp_path / "labelled", "lensfinding")
    assert list(splits) == ["train"] and splits["train"].class_counts().tolist() == [4, 2]  # nonlens, lens
    lens_copies = sorted((tmp_path / "labelled" / "train_lenses").iterdir())
    assert [p.read_bytes() for p in lens_copies] == [Path(o).read_bytes() for o in objects[:2]]
    assert "lensfinder train --task lensfinding --data" in result.output
    again = runner.invoke(cli_app, ["grades", str(tmp_path / "g.sqlite"), "--labelled-folder", str(tmp_path / "labelled")])
    assert again.exit_code != 0 and "already holds files" in str(again.exception)
    refused = runner.invoke(cli_app, ["grades", str(tmp_path / "g.sqlite"), "--out", str(tmp_path / "g.xlsx")])
    assert refused.exit_code != 0 and "unsupported output type" in str(refused.exception)
    assert not (tmp_path / "g.xlsx").exists()
    empty = runner.invoke(cli_app, ["grades", str(tmp_path / "none.sqlite")])
    assert "grades database not found" in str(empty.exception)


# The page in a real browser ---------------------------------------------------------------------------------------

def _browser(profile: Path):
    """Selenium driving Debian's chromium, or a skip naming the packages to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed; for the browser test: {BROWSER_PACKAGES}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip(f"no chromium/chromedriver on this machine; for the browser test: {BROWSER_PACKAGES}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,860"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_grading_in_chromium(catalogue, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    db_path = tmp_path / "browser.sqlite"
    server = make_server(catalogue, db=db_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/"
    driver = _browser(tmp_path / "profile")
    wait = WebDriverWait(driver, 30)
    objects = _objects(catalogue)

    def card(index: int):
        return driver.find_element(By.CSS_SELECTOR, f'.card[data-index="{index}"]')

    def press(*keys) -> None:
        for key in keys:
            driver.find_element(By.TAG_NAME, "body").send_keys(key)

    def selected() -> int:
        return int(driver.find_element(By.CSS_SELECTOR, ".card.selected").get_attribute("data-index"))

    def images_loaded() -> bool:
        return driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

    def graded(grader: str) -> dict:
        return {g.object: (g.grade, g.comment) for g in GradesDB(db_path).grades(grader=grader)}

    try:
        driver.get(base + "?grader=alice")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 22 and images_loaded())
        placeholders = driver.find_elements(By.CSS_SELECTOR, ".card .placeholder")
        assert len(placeholders) == 2 and "cutout file not found" in placeholders[0].text
        assert selected() == 0
        press("3", "2", "0", "1")  # grade four and move on by itself
        wait.until(lambda d: selected() == 4 and card(3).get_attribute("data-grade") == "1")
        assert [card(k).get_attribute("data-grade") for k in range(4)] == ["3", "2", "0", "1"]
        press("u")  # undo the last: #4 is ungraded again and selected
        wait.until(lambda d: card(3).get_attribute("data-grade") == "" and selected() == 3)
        press("c")
        driver.switch_to.active_element.send_keys("faint arc, check", Keys.ENTER)
        press("2")
        wait.until(lambda d: selected() == 4)
        wait.until(lambda d: len(graded("alice")) == 4)
        assert graded("alice") == {objects[0]: (3, ""), objects[1]: (2, ""), objects[2]: (0, ""),
                                   objects[3]: (2, "faint arc, check")}
        progress = driver.find_element(By.ID, "progress")
        assert progress.get_attribute("data-graded") == "4" and "4 / 22 graded by you" in progress.text

        driver.save_screenshot(str(tmp_path / "inspect_grid.png"))
        if FIGURES:  # LENSFINDER_SCREENSHOTS=docs/figures refreshes the README's screenshots; tests never write the tree
            FIGURES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "inspect_grid.png", FIGURES / "inspect_grid.png")

        driver.refresh()  # grades kept, and the grader is back where they stopped
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.selected")) == 1 and images_loaded())
        assert [card(k).get_attribute("data-grade") for k in range(5)] == ["3", "2", "0", "2", ""]
        assert selected() == 4

        def zoomed(index: int) -> bool:
            zoom = driver.find_element(By.ID, "zoom")
            return (zoom.is_displayed() and zoom.get_attribute("data-index") == str(index)
                    and len(driver.find_elements(By.CSS_SELECTOR, "#zoom-panels img")) == 6 and images_loaded())

        card(0).click()  # the zoomed view of the top candidate: composite, residual stretch, bands, metadata
        press(Keys.ENTER)
        wait.until(lambda d: zoomed(0))
        zoom_text = driver.find_element(By.ID, "zoom").text
        assert "theta_e_arcsec" in zoom_text and "g band" in zoom_text and "residual stretch" in zoom_text
        assert re.search(r"your grade\s+3 \(definite\)", zoom_text)
        driver.save_screenshot(str(tmp_path / "inspect_zoom.png"))
        if FIGURES:
            shutil.copyfile(tmp_path / "inspect_zoom.png", FIGURES / "inspect_zoom.png")
        press(Keys.ESCAPE)
        card(4).click()
        press(Keys.ENTER)
        wait.until(lambda d: zoomed(4))
        press("1")  # grading in the zoomed view moves the zoom on
        wait.until(lambda d: d.find_element(By.ID, "zoom").get_attribute("data-index") == "5")
        press(Keys.ESCAPE)
        wait.until(lambda d: not d.find_element(By.ID, "zoom").is_displayed())

        # a second grader in another tab, at the same time: each sees and writes only their own grades
        alice = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(base + "?grader=bob")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.selected")) == 1)
        assert selected() == 0 and card(0).get_attribute("data-grade") == ""
        press("0")
        wait.until(lambda d: card(0).get_attribute("data-grade") == "0")
        driver.switch_to.window(alice)
        press("3")
        wait.until(lambda d: card(5).get_attribute("data-grade") == "3")
        wait.until(lambda d: len(graded("alice")) == 6 and len(graded("bob")) == 1)
        assert graded("bob") == {objects[0]: (0, "")}
        assert graded("alice")[objects[0]] == (3, "") and graded("alice")[objects[5]] == (3, "")
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    assert GradesDB(db_path).integrity() == "ok"
