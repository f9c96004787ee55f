"""The grading web app (Flask, served by Werkzeug's threaded server): the page and its static files from package
data, a JSON API over the catalogue and the grades database, and server-side PNG rendering of the cutouts."""

from __future__ import annotations

import math
from pathlib import Path

from flask import Flask, Response, jsonify, request, send_from_directory

from ..validation import InputError
from . import render
from .catalogue import Catalogue, Candidate, band_names, read_catalogue
from .db import GRADE_NAMES, GradesDB, check_grader

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 60  # candidates per grid page (the page may ask for 1 to MAX_PAGE)
MAX_PAGE = 500
STRETCH_RANGE = (0.01, 100.0)  # the page's stretch slider, as a factor on the automatic range
Q_RANGE = (0.1, 100.0)
METADATA_FIRST = ("label", "theta_e_arcsec", "arc_snr", "magnification", "source_mag_i", "confuser_kind",
                  "deflector_type", "deflector_mag_i", "n_images", "artefact_kinds")  # shown first in the zoomed view
DEFAULT_HOST = "127.0.0.1"  # localhost only unless --host says otherwise


class NotFound(Exception):
    """An object, index or file the request names that the catalogue does not hold (HTTP 404)."""


def default_db_path(catalogue: Path) -> Path:
    """Where grades go unless --db says otherwise: grades.sqlite beside the catalogue."""
    return Path(catalogue).with_name("grades.sqlite")


class Inspector:
    """The state one server holds: the catalogue, the grades database and the PNG cache."""

    def __init__(self, catalogue: Catalogue, db: GradesDB, *, default_grader: str | None = None):
        self.catalogue, self.db = catalogue, db
        self.default_grader = check_grader(default_grader) if default_grader else None
        self.cache = render.PNGCache()
        self.catalogue_path = str(catalogue.path.resolve())

    def candidate(self, index: int) -> Candidate:
        if not 0 <= index < len(self.catalogue):
            raise NotFound(f"no candidate at position {index}: the catalogue holds {len(self.catalogue)} (0 to {len(self.catalogue) - 1})")
        return self.catalogue.candidates[index]

    def image(self, candidate: Candidate):
        """(image, None) or (None, the reason it cannot be shown); the outcome ("" or the reason) is cached, the
        image is not (the PNGs made from it are)."""
        key = ("status", candidate.index)
        reason = self.cache.get(key)
        if reason:
            return None, reason
        try:
            image = render.read_image(self.catalogue.files(candidate))
            reason = ""
        except InputError as err:
            image, reason = None, str(err)
        except OSError as err:  # permissions, a file removed between the look-up and the read
            image, reason = None, f"{candidate.object}: cannot be read ({err})"
        self.cache.put(key, reason)
        return image, reason or None

    def problem(self, candidate: Candidate) -> str | None:
        """Why the candidate's cutout cannot be shown, or None; reads the file only the first time."""
        reason = self.cache.get(("status", candidate.index))
        if reason is None:
            return self.image(candidate)[1]
        return reason or None

    def progress(self, grader: str) -> dict:
        mine = self.db.objects_graded(grader)
        everyone = self.db.objects_graded()
        keys = self.catalogue.by_object
        return {"graded": sum(1 for o in mine if o in keys), "total": len(self.catalogue),
                "graded_by_anyone": sum(1 for o in everyone if o in keys)}

    def item(self, candidate: Candidate, grade) -> dict:
        name = Path(candidate.object).name
        for suffix in (".npy", ".fits", ".fit", ".fits.gz", ".fit.gz"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        return {"index": candidate.index, "object": candidate.object, "name": name, "rank": candidate.rank,
                "score": candidate.score if math.isfinite(candidate.score) else str(candidate.score),
                "p_lens": candidate.p_lens, "predicted": candidate.predicted,
                "grade": None if grade is None else grade.grade, "comment": "" if grade is None else grade.comment}

    def resume_index(self, grader: str) -> int:
        """Where a returning grader starts: just after the object they graded last, else the first ungraded."""
        last = self.db.last_graded(grader)
        if last is not None and last in self.catalogue.by_object:
            return min(self.catalogue.by_object[last] + 1, len(self.catalogue) - 1)
        graded = self.db.objects_graded(grader)
        return next((c.index for c in self.catalogue.candidates if c.object not in graded), 0)


def _number(name: str, default: float, bounds: tuple[float, float]) -> float:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"?{name}={text!r}: expected a number in [{bounds[0]}, {bounds[1]}]") from None
    if not (bounds[0] <= value <= bounds[1]):
        raise InputError(f"?{name}={text!r}: expected a number in [{bounds[0]}, {bounds[1]}]")
    return value


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"?{name}={text!r}: expected a whole number in [{low}, {high}]") from None
    if not low <= value <= high:
        raise InputError(f"?{name}={text!r}: expected a whole number in [{low}, {high}]")
    return value


def create_app(catalogue: Catalogue, db: GradesDB, *, default_grader: str | None = None) -> Flask:
    """The Flask app for one catalogue and one grades database."""
    state = Inspector(catalogue, db, default_grader=default_grader)
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.json.sort_keys = False  # the simulator's metadata keeps its order
    app.extensions["lensfinder_inspector"] = state

    def grader_arg(value: str | None = None) -> str:
        name = value if value is not None else request.args.get("grader") or state.default_grader
        if not name:
            raise InputError("no grader: add ?grader=NAME to the address, or start the server with --grader NAME")
        return check_grader(name)

    @app.errorhandler(InputError)
    def _bad_input(err):
        return jsonify(error=str(err)), 400

    @app.errorhandler(NotFound)
    def _not_found(err):
        return jsonify(error=str(err)), 404

    @app.get("/")
    def index():
        response = send_from_directory(STATIC, "index.html")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/config")
    def config():
        return jsonify(catalogue=catalogue.path.name, total=len(catalogue), default_grader=state.default_grader,
                       grades={str(k): v for k, v in GRADE_NAMES.items()}, page_size=PAGE_SIZE, max_page=MAX_PAGE,
                       stretch=render.DEFAULT_STRETCH, q=render.DEFAULT_Q, stretch_range=STRETCH_RANGE, q_range=Q_RANGE,
                       db=str(db.path))

    @app.get("/api/items")
    def items():
        grader = grader_arg()
        start = _int_arg("start", 0, 0, max(len(catalogue) - 1, 0))
        count = _int_arg("count", PAGE_SIZE, 1, MAX_PAGE)
        page = catalogue.candidates[start : start + count]
        grades = db.grades_for(grader, [c.object for c in page])
        rows = []
        for candidate in page:
            row = state.item(candidate, grades.get(candidate.object))
            row["problem"] = state.problem(candidate)
            rows.append(row)
        return jsonify(start=start, items=rows, progress=state.progress(grader), grader=grader)

    @app.get("/api/item/<int:index>")
    def item(index: int):
        grader = grader_arg()
        candidate = state.candidate(index)
        row = state.item(candidate, db.grades_for(grader, [candidate.object]).get(candidate.object))
        image, problem = state.image(candidate)
        row["problem"] = problem
        row["bands"] = [] if image is None else band_names(catalogue.files(candidate), image.shape[0])
        row["shape"] = None if image is None else list(image.shape)
        metadata = catalogue.metadata(candidate)
        first = [k for k in METADATA_FIRST if k in metadata]
        row["metadata"] = {k: metadata[k] for k in first + [k for k in metadata if k not in first]}
        return jsonify(row)

    @app.get("/api/resume")
    def resume():
        grader = grader_arg()
        return jsonify(index=state.resume_index(grader), progress=state.progress(grader))

    @app.post("/api/grade")
    def grade():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InputError("expected a JSON body {object, grader, grade, comment}")
        grader = grader_arg(str(body.get("grader") or state.default_grader or ""))
        object_id = body.get("object")
        candidate = catalogue.get(object_id) if isinstance(object_id, str) else None
        if candidate is None:
            raise NotFound(f"unknown object {object_id!r}: not in the catalogue {catalogue.path.name}; grades are "
                           "accepted only for its objects")
        saved = db.set_grade(candidate.object, grader, body.get("grade"), str(body.get("comment") or ""),
                             rank=candidate.rank, score=candidate.score if math.isfinite(candidate.score) else None,
                             catalogue=state.catalogue_path)
        return jsonify(object=saved.object, index=candidate.index, grade=saved.grade, comment=saved.comment,
                       progress=state.progress(grader))

    @app.post("/api/undo")
    def undo():
        body = request.get_json(silent=True) or {}
        grader = grader_arg(str(body.get("grader") or state.default_grader or "") if isinstance(body, dict) else None)
        done = db.undo(grader)
        if done is None:
            return jsonify(object=None, index=None, grade=None, progress=state.progress(grader))
        object_id, now = done
        return jsonify(object=object_id, index=catalogue.by_object.get(object_id),
                       grade=None if now is None else now.grade, comment="" if now is None else now.comment,
                       progress=state.progress(grader))

    @app.get("/img/<int:index>/<kind>.png")
    def image(index: int, kind: str):
        if kind not in render.KINDS:
            raise NotFound(f"no view {kind!r}; expected one of {', '.join(render.KINDS)}")
        candidate = state.candidate(index)
        band_index = _int_arg("band", 0, 0, 63)
        stretch = _number("stretch", render.DEFAULT_STRETCH, STRETCH_RANGE)
        q = _number("q", render.DEFAULT_Q, Q_RANGE)
        key = (index, kind, band_index, round(stretch, 4), round(q, 4))
        data = state.cache.get(key)
        if data is None:
            image, problem = state.image(candidate)
            if image is None:
                raise NotFound(problem)
            if band_index >= image.shape[0]:
                raise NotFound(f"{candidate.object}: no band {band_index}; the cutout has {image.shape[0]}")
            data = render.render(image, kind, band_index=band_index, stretch=stretch, q=q)
            state.cache.put(key, data)
        return Response(data, mimetype="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app


def make_server(catalogue: Path, *, db: Path | None = None, host: str = DEFAULT_HOST, port: int = 8000,
                grader: str | None = None):
    """A Werkzeug threaded server for the catalogue (not yet serving): call `.serve_forever()`; `.server_port`
    is the port (useful with port 0, a free one). A port in use is an `InputError` naming the fix."""
    import logging

    from werkzeug.serving import make_server as werkzeug_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request: a page asks for hundreds of PNGs
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: expected 0 to 65535 (0 picks a free port)")
    table = read_catalogue(catalogue)
    grades = GradesDB(db if db is not None else default_db_path(catalogue))
    app = create_app(table, grades, default_grader=grader)
    render.warm_up()
    try:
        return werkzeug_server(host, port, app, threaded=True)
    except OSError as err:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); pass another --port "
                         "(0 picks a free one)") from None
    except SystemExit:  # werkzeug exits when the port is taken on some platforms
        raise InputError(f"--port {port}: already in use; pass another --port (0 picks a free one)") from None


def serve(catalogue: Path, *, db: Path | None = None, host: str = DEFAULT_HOST, port: int = 8000,
          grader: str | None = None, announce=print) -> None:
    """Serve the grading page until interrupted (Ctrl-C)."""
    server = make_server(catalogue, db=db, host=host, port=port, grader=grader)
    app = server.app
    state: Inspector = app.extensions["lensfinder_inspector"]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    query = f"?grader={grader}" if grader else ""
    announce(f"grading {len(state.catalogue)} candidate(s) of {catalogue}; grades go to {state.db.path}")
    announce(f"open http://{shown}:{server.server_port}/{query}  (Ctrl-C stops; grades are saved as you go)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(f"warning: listening on {host}: anyone who can reach this machine can see the cutouts and grade")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
