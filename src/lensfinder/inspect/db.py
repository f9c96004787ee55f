"""The grades database: SQLite in WAL mode, one row per (object, grader), each grade committed (fsync'd) the moment
it is given, with a history table that makes undo survive a reload. Every call opens its own connection, so
the server's threads, several graders and a second server on the same file each see whole transactions."""

from __future__ import annotations

import sqlite3
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..validation import InputError

SCHEMA_VERSION = 1
GRADES = (0, 1, 2, 3)  # 0 not a lens, 1 possible, 2 probable, 3 definite
GRADE_NAMES = {0: "not a lens", 1: "possible", 2: "probable", 3: "definite"}
MAX_GRADER = 64  # characters in a grader's name
MAX_COMMENT = 2000  # characters in a comment
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another (thread, server) holding the write lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS grades (
    object    TEXT    NOT NULL,              -- the catalogue's key (predict's path column)
    grader    TEXT    NOT NULL,
    grade     INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 3),
    comment   TEXT    NOT NULL DEFAULT '',
    rank      INTEGER,                       -- in the catalogue it was graded from
    score     REAL,                          -- the model's log-odds there
    catalogue TEXT,                          -- absolute path of that catalogue (relative object keys resolve there)
    seq       INTEGER NOT NULL,              -- history.seq of the change that set this row: the grader's order
    updated   TEXT    NOT NULL,              -- UTC, ISO 8601
    PRIMARY KEY (object, grader)
);
CREATE TABLE IF NOT EXISTS history (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    object           TEXT    NOT NULL,
    grader           TEXT    NOT NULL,
    action           TEXT    NOT NULL CHECK (action IN ('grade', 'undo')),
    grade            INTEGER,
    comment          TEXT,
    previous_grade   INTEGER,                -- NULL: the object had no grade from this grader before
    previous_comment TEXT,
    undone           INTEGER NOT NULL DEFAULT 0,
    at               TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS history_grader ON history (grader, action, undone, seq);
CREATE INDEX IF NOT EXISTS grades_grader ON grades (grader, seq);
"""


@dataclass(frozen=True)
class Grade:
    object: str
    grader: str
    grade: int
    comment: str
    rank: int | None
    score: float | None
    catalogue: str | None
    seq: int
    updated: str


def check_grader(name: str | None) -> str:
    """A grader's name: 1 to 64 printable characters, surrounding spaces dropped."""
    name = (name or "").strip()
    if not name or len(name) > MAX_GRADER or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InputError(f"grader name {name!r}: expected 1 to {MAX_GRADER} printable characters, e.g. --grader alice")
    return name


def check_grade(grade: object) -> int:
    if isinstance(grade, bool) or not isinstance(grade, int) or grade not in GRADES:
        raise InputError(f"grade {grade!r}: expected one of 0 (not a lens), 1 (possible), 2 (probable), 3 (definite)")
    return grade


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class GradesDB:
    """One SQLite file of grades. `create=False` refuses a path that does not exist (for reading results)."""

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise InputError(f"{self.path}: grades database not found; grade with `lensfinder inspect CATALOG --db {self.path}`")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if version not in (0, SCHEMA_VERSION) or (version == 0 and tables - {"sqlite_sequence"}):
                    raise InputError(f"{self.path}: an SQLite file that is not a lensfinder grades database (schema "
                                     f"version {version}, tables {', '.join(sorted(tables)) or 'none'}); pass a new --db path")
                if create:
                    conn.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
                    conn.executescript(SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise InputError(f"{self.path}: holds no grades yet (an empty database)")
        except sqlite3.DatabaseError as err:
            raise InputError(f"{self.path}: not a readable SQLite database ({err}); pass another --db path") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = FULL")  # each commit reaches the disk: a crash loses no grade
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE), so two writers queue instead of
        one failing halfway."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def set_grade(self, object_id: str, grader: str, grade: int, comment: str = "", *, rank: int | None = None,
                  score: float | None = None, catalogue: str | None = None) -> Grade:
        """Insert or replace this grader's grade of the object, recording the previous one for undo."""
        grader, grade = check_grader(grader), check_grade(grade)
        comment = (comment or "").strip()
        if len(comment) > MAX_COMMENT:
            raise InputError(f"comment of {len(comment)} characters: at most {MAX_COMMENT}")
        at = _now()
        with self._write() as conn:
            before = conn.execute("SELECT grade, comment FROM grades WHERE object = ? AND grader = ?",
                                  (object_id, grader)).fetchone()
            seq = conn.execute(
                "INSERT INTO history (object, grader, action, grade, comment, previous_grade, previous_comment, at) "
                "VALUES (?, ?, 'grade', ?, ?, ?, ?, ?)",
                (object_id, grader, grade, comment, *(before or (None, None)), at)).lastrowid
            conn.execute(
                "INSERT INTO grades (object, grader, grade, comment, rank, score, catalogue, seq, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (object, grader) DO UPDATE SET grade = excluded.grade, "
                "comment = excluded.comment, rank = excluded.rank, score = excluded.score, "
                "catalogue = excluded.catalogue, seq = excluded.seq, updated = excluded.updated",
                (object_id, grader, grade, comment, rank, score, catalogue, seq, at))
        return Grade(object_id, grader, grade, comment, rank, score, catalogue, seq, at)

    def undo(self, grader: str) -> tuple[str, Grade | None] | None:
        """Take back this grader's latest grade not yet undone: the object's grade returns to what it was before
        (none, or the earlier grade). Returns (object, the grade now in force or None), or None if nothing is left."""
        grader = check_grader(grader)
        with self._write() as conn:
            last = conn.execute(
                "SELECT seq, object, previous_grade, previous_comment FROM history WHERE grader = ? AND action = 'grade' "
                "AND undone = 0 ORDER BY seq DESC LIMIT 1", (grader,)).fetchone()
            if last is None:
                return None
            seq, object_id, previous_grade, previous_comment = last
            conn.execute("UPDATE history SET undone = 1 WHERE seq = ?", (seq,))
            at = _now()
            undo_seq = conn.execute(
                "INSERT INTO history (object, grader, action, grade, comment, at) VALUES (?, ?, 'undo', ?, ?, ?)",
                (object_id, grader, previous_grade, previous_comment, at)).lastrowid
            if previous_grade is None:
                conn.execute("DELETE FROM grades WHERE object = ? AND grader = ?", (object_id, grader))
                return object_id, None
            conn.execute("UPDATE grades SET grade = ?, comment = ?, seq = ?, updated = ? WHERE object = ? AND grader = ?",
                         (previous_grade, previous_comment or "", undo_seq, at, object_id, grader))
            row = conn.execute("SELECT * FROM grades WHERE object = ? AND grader = ?", (object_id, grader)).fetchone()
            return object_id, Grade(*row)

    def grades(self, *, grader: str | None = None) -> list[Grade]:
        """Every grade (of one grader), oldest change first."""
        query, args = "SELECT * FROM grades", ()
        if grader is not None:
            query, args = query + " WHERE grader = ?", (grader,)
        with self._connect() as conn:
            return [Grade(*row) for row in conn.execute(query + " ORDER BY seq", args)]

    def grades_for(self, grader: str, objects: list[str]) -> dict[str, Grade]:
        """This grader's grades of the given objects, by object."""
        out: dict[str, Grade] = {}
        with self._connect() as conn:
            for start in range(0, len(objects), 500):  # SQLite caps the number of bound parameters
                chunk = objects[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(f"SELECT * FROM grades WHERE grader = ? AND object IN ({marks})", (grader, *chunk)):
                    out[row[0]] = Grade(*row)
        return out

    def last_graded(self, grader: str) -> str | None:
        """The object this grader graded last (undone grades excluded)."""
        with self._connect() as conn:
            row = conn.execute("SELECT object FROM grades WHERE grader = ? ORDER BY seq DESC LIMIT 1", (grader,)).fetchone()
        return row[0] if row else None

    def objects_graded(self, grader: str | None = None) -> set[str]:
        with self._connect() as conn:
            if grader is None:
                return {r[0] for r in conn.execute("SELECT DISTINCT object FROM grades")}
            return {r[0] for r in conn.execute("SELECT object FROM grades WHERE grader = ?", (grader,))}

    def graders(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT grader FROM grades ORDER BY grader")]

    def integrity(self) -> str:
        """SQLite's own check of the file: 'ok' when sound."""
        with self._connect() as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
