"""Grades to results: each object's mean grade, spread and HOLISMOKES class; agreement between graders (pairwise
Cohen's kappa, Fleiss' kappa); the graded table as CSV / FITS / Parquet; a self-contained HTML gallery of the
A and B lenses; and a lens-finding layout of the graded cutouts for fine-tuning."""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.layouts import atomic_path, atomic_write, write_text_atomic
from ..validation import InputError
from .catalogue import cutout_files
from .db import GRADES, Grade, GradesDB

OUTPUT_SUFFIXES = (".csv", ".fits", ".parquet")
# HOLISMOKES (Canameras et al. 2021, 2024) classes from the mean grade G on the 0-3 scale. The papers give A as
# G > 2.5 and B as 1.5 < G <= 2.5; C (possible lens) is taken here as 0.5 < G <= 1.5, and G <= 0.5 is not a lens.
CLASS_EDGES = (("A", 2.5), ("B", 1.5), ("C", 0.5))  # class, exclusive lower bound of the mean grade
NOT_A_LENS = "not a lens"
CLASS_ORDER = ("A", "B", "C", NOT_A_LENS)
COLUMNS = ("object", "rank", "score", "n_graders", "mean_grade", "grade_std", "grade_min", "grade_max", "class",
           "grades", "comments", "catalogue")


def holismokes_class(mean_grade: float) -> str:
    """A: mean > 2.5; B: 1.5 < mean <= 2.5; C: 0.5 < mean <= 1.5; else "not a lens"."""
    for name, lower in CLASS_EDGES:
        if mean_grade > lower:
            return name
    return NOT_A_LENS


@dataclass(frozen=True)
class GradedObject:
    object: str
    rank: int | None
    score: float | None
    grades: dict[str, int]  # grader -> grade
    comments: dict[str, str]  # grader -> comment (only the non-empty)
    catalogue: str | None

    @property
    def n_graders(self) -> int:
        return len(self.grades)

    @property
    def mean_grade(self) -> float:
        return float(np.mean(list(self.grades.values())))

    @property
    def grade_std(self) -> float:
        """Population standard deviation of the grades (0 for one grader)."""
        return float(np.std(list(self.grades.values())))

    @property
    def lens_class(self) -> str:
        return holismokes_class(self.mean_grade)


def graded_objects(grades: list[Grade]) -> list[GradedObject]:
    """One entry per object, ordered by rank (then object key)."""
    by_object: dict[str, list[Grade]] = {}
    for grade in grades:
        by_object.setdefault(grade.object, []).append(grade)
    out = []
    for key, rows in by_object.items():
        latest = max(rows, key=lambda g: g.seq)
        out.append(GradedObject(key, latest.rank, latest.score, {g.grader: g.grade for g in rows},
                                {g.grader: g.comment for g in rows if g.comment}, latest.catalogue))
    return sorted(out, key=lambda o: (o.rank if o.rank is not None else np.iinfo(np.int64).max, o.object))


# Agreement --------------------------------------------------------------------------------------------------------

def cohen_kappa(a: list[int], b: list[int], categories: tuple[int, ...] = GRADES) -> float:
    """Cohen's (unweighted) kappa of two graders' grades of the same objects: (p_o - p_e) / (1 - p_e), with p_o
    the fraction of objects on which they agree and p_e = sum_k p_a(k) p_b(k) the agreement expected by chance
    from each grader's own grade frequencies. NaN when p_e = 1 (both gave one and the same grade throughout)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("cohen_kappa needs two equal-length, non-empty lists of grades")
    p_o = float(np.mean(a == b))
    p_e = float(sum(np.mean(a == k) * np.mean(b == k) for k in categories))
    return float("nan") if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an (objects, categories) table of how many graders gave each grade to each object.

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) is the agreement on object i among its n_i graders,
    P_bar their mean, p_j = sum_i n_ij / sum_i n_i the share of grade j, P_e = sum_j p_j^2, and
    kappa = (P_bar - P_e) / (1 - P_e). With the same n for every object this is Fleiss (1971); objects with
    different numbers of graders are allowed (each object's P_i uses its own n_i), objects with fewer than two
    graders are left out. NaN when no object has two graders or P_e = 1."""
    counts = np.asarray(counts, dtype=np.float64)
    n_i = counts.sum(1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if not len(counts):
        return float("nan")
    p_i = ((counts ** 2).sum(1) - n_i) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = counts.sum(0) / n_i.sum()
    p_e = float((p_j ** 2).sum())
    return float("nan") if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


def agreement(objects: list[GradedObject]) -> dict:
    """Pairwise Cohen's kappa (over the objects both graders graded) and Fleiss' kappa (over the objects with
    two or more graders), with the counts they rest on; kappas that cannot be computed are None."""
    graders = sorted({g for o in objects for g in o.grades})
    pairs = []
    for first, second in itertools.combinations(graders, 2):
        both = [o for o in objects if first in o.grades and second in o.grades]
        kappa = cohen_kappa([o.grades[first] for o in both], [o.grades[second] for o in both]) if both else float("nan")
        pairs.append({"graders": [first, second], "n_objects": len(both), "cohen_kappa": _finite(kappa)})
    table = np.array([[list(o.grades.values()).count(k) for k in GRADES] for o in objects]).reshape(-1, len(GRADES))
    shared = int((table.sum(1) >= 2).sum())
    return {"graders": graders, "n_objects": len(objects), "fleiss_kappa": _finite(fleiss_kappa(table)),
            "fleiss_n_objects": shared, "pairwise": pairs,
            "classes": {c: sum(o.lens_class == c for o in objects) for c in CLASS_ORDER},
            "class_rule": "A: mean > 2.5; B: 1.5 < mean <= 2.5; C: 0.5 < mean <= 1.5; not a lens: mean <= 0.5"}


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


# Outputs ----------------------------------------------------------------------------------------------------------

def table_rows(objects: list[GradedObject]) -> list[dict]:
    rows = []
    for o in objects:
        values = list(o.grades.values())
        rows.append({"object": o.object, "rank": -1 if o.rank is None else int(o.rank),
                     "score": float("nan") if o.score is None else float(o.score), "n_graders": o.n_graders,
                     "mean_grade": o.mean_grade, "grade_std": o.grade_std, "grade_min": int(min(values)),
                     "grade_max": int(max(values)), "class": o.lens_class,
                     "grades": ";".join(f"{g}:{v}" for g, v in sorted(o.grades.items())),
                     "comments": " | ".join(f"{g}: {c}" for g, c in sorted(o.comments.items())),
                     "catalogue": o.catalogue or ""})
    return rows


def check_output(out: Path) -> str:
    """The suffix of a graded-table path; any other extension than .csv, .fits, .parquet is refused."""
    out = Path(out)
    suffix = next((s for s in OUTPUT_SUFFIXES if out.name.lower().endswith(s)), None)
    if suffix is None:
        raise InputError(f"{out}: unsupported output type {out.suffix or '(none)'!r}; expected one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}, e.g. --out graded.csv")
    return suffix


def agreement_path_for(out: Path) -> Path:
    """Where the agreement report of graded table `out` goes: <name>.agreement.json beside it."""
    out = Path(out)
    return out.with_name(out.name[: -len(check_output(out))] + ".agreement.json")


def write_table(objects: list[GradedObject], out: Path) -> Path:
    """The graded table (one row per object, the columns of `COLUMNS`) as .csv, .fits or .parquet; other
    extensions are refused. Written atomically."""
    out = Path(out)
    suffix = check_output(out)
    rows = table_rows(objects)
    columns = {c: [r[c] for r in rows] for c in COLUMNS}
    if suffix == ".csv":
        with atomic_write(out, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for r in rows:
                writer.writerow([repr(r[c]) if isinstance(r[c], float) else r[c] for c in COLUMNS])
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"rank": pa.int64(), "score": pa.float64(), "n_graders": pa.int64(), "mean_grade": pa.float64(),
                 "grade_std": pa.float64(), "grade_min": pa.int64(), "grade_max": pa.int64()}
        table = pa.table({c: pa.array(columns[c], type=types.get(c, pa.string())) for c in COLUMNS})
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    else:
        from astropy.table import Table

        dtypes = {"rank": np.int64, "score": np.float64, "n_graders": np.int64, "mean_grade": np.float64,
                  "grade_std": np.float64, "grade_min": np.int64, "grade_max": np.int64}
        table = Table({c: np.asarray(columns[c], dtype=dtypes.get(c, str)) if rows else np.zeros(0, dtypes.get(c, "U1"))
                       for c in COLUMNS})
        table.meta["CLASSES"] = "A: G>2.5; B: 1.5<G<=2.5; C: 0.5<G<=1.5"
        with atomic_path(out) as tmp:
            table.write(tmp, format="fits", overwrite=True)
    return out


def write_agreement(report: dict, out: Path) -> Path:
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return out


def _files_of(o: GradedObject) -> list[Path]:
    return cutout_files(o.object, Path(o.catalogue).parent if o.catalogue else Path("."))


def write_gallery(objects: list[GradedObject], out: Path, *, classes: tuple[str, ...] = ("A", "B"),
                  title: str = "lensfinder: graded lenses") -> Path:
    """A static HTML page of the objects in `classes` (default A and B), best mean grade first, each with its
    colour composite inlined as a data URI (the page needs no other file), grades and comments."""
    from . import render

    out = Path(out)
    if not out.name.lower().endswith((".html", ".htm")):
        raise InputError(f"{out}: the gallery is an HTML page; name it e.g. gallery.html")
    chosen = sorted((o for o in objects if o.lens_class in classes), key=lambda o: (-o.mean_grade, o.rank or 0))
    cards = []
    for o in chosen:
        try:
            image = render.read_image(_files_of(o))
            uri = "data:image/png;base64," + base64.b64encode(render.png(render.composite(image))).decode("ascii")
            picture = f'<img src="{uri}" alt="{html.escape(o.object)}">'
        except InputError as err:
            picture = f'<div class="missing">cannot show: {html.escape(str(err))}</div>'
        grades = ", ".join(f"{html.escape(g)}: {v}" for g, v in sorted(o.grades.items()))
        comments = "".join(f"<li>{html.escape(g)}: {html.escape(c)}</li>" for g, c in sorted(o.comments.items()))
        cards.append(f'<figure class="class-{o.lens_class}">{picture}<figcaption><b>{o.lens_class}</b> '
                     f'mean {o.mean_grade:.2f} ({o.n_graders} grader{"s" if o.n_graders != 1 else ""})'
                     f'<br>rank {o.rank} &middot; score {"-" if o.score is None else f"{o.score:.2f}"}'
                     f'<br><span class="id">{html.escape(Path(o.object).name)}</span><br><small>{grades}</small>'
                     f'{f"<ul>{comments}</ul>" if comments else ""}</figcaption></figure>')
    counts = ", ".join(f"{sum(o.lens_class == c for o in chosen)} {c}" for c in classes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ background: #14161a; color: #e6e6e6; font: 14px system-ui, sans-serif; margin: 20px; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 14px; }}
figure {{ margin: 0; background: #1e2127; padding: 8px; border-radius: 6px; border-top: 4px solid #f59e0b; }}
figure.class-A {{ border-top-color: #22c55e; }}
img {{ width: 100%; image-rendering: pixelated; display: block; }}
.missing {{ aspect-ratio: 1; color: #ef4444; font-size: 11px; background: #2a1c1c; padding: 6px; overflow: auto; }}
.id {{ color: #9aa0a6; font-size: 11px; }} ul {{ margin: 4px 0; padding-left: 16px; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{counts} (HOLISMOKES classes from the mean grade on 0-3: A &gt; 2.5, B 1.5-2.5). Composites: Lupton asinh,
i, r, g as red, green, blue.</p>
<main>
{chr(10).join(cards) if cards else "<p>No A or B lenses among the graded objects.</p>"}
</main></body></html>
"""
    write_text_atomic(out, page)
    return out


MIN_CLASSES = ("A", "B", "C")


@dataclass(frozen=True)
class Labelled:
    """What `write_labelled_folder` wrote, and the graded objects whose cutout could not be read (with why)."""

    folder: Path
    lenses: int
    nonlenses: int
    skipped: list[tuple[str, str]]


def write_labelled_folder(objects: list[GradedObject], folder: Path, *, min_class: str = "B") -> Labelled:
    """Copy the graded cutouts into the lens-finding layout under `folder`: train_lenses/ for the objects of class
    `min_class` or better (A; A and B; or A, B and C), train_nonlenses/ for those graded not a lens (mean grade
    <= 0.5); the rest (e.g. C with min_class B) are left out. .npy cutouts are copied as they are; FITS ones are
    written as .npy; a cutout that cannot be read is left out and listed in the result. labels.csv lists each
    copy with its source, class and mean grade.
    `lensfinder train --task lensfinding --data FOLDER` then trains (or fine-tunes) on them."""
    if min_class not in MIN_CLASSES:
        raise InputError(f"--min-class {min_class!r}: expected one of {', '.join(MIN_CLASSES)}")
    folder = Path(folder)
    lens_classes = CLASS_ORDER[: CLASS_ORDER.index(min_class) + 1]
    targets = {"train_lenses": [o for o in objects if o.lens_class in lens_classes],
               "train_nonlenses": [o for o in objects if o.lens_class == NOT_A_LENS]}
    for name in targets:
        if (folder / name).exists() and any((folder / name).iterdir()):
            raise InputError(f"{folder / name}: already holds files; write the labelled folder to a new path "
                             "(or delete the old one) so that earlier labels do not mix with these")
    if not any(targets.values()):
        raise InputError(f"no graded object is class {'/'.join(lens_classes)} or not a lens; grade more candidates first")
    from . import render

    listing, counts, skipped = [], {name: 0 for name in targets}, []
    for name, chosen in targets.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for o in chosen:
            stem = Path(o.object).name.split(".")[0]
            target = folder / name / f"rank{o.rank if o.rank is not None else 0:07d}_{stem}.npy"
            try:
                files = _files_of(o)
                image = render.read_image(files)  # a cutout that does not read would only fail the training later
            except InputError as err:
                skipped.append((o.object, str(err)))
                continue
            with atomic_path(target) as tmp:
                if len(files) == 1 and files[0].suffix == ".npy":
                    shutil.copyfile(files[0], tmp)
                else:
                    np.save(tmp, image)
            counts[name] += 1
            listing.append({"file": f"{name}/{target.name}", "object": o.object, "class": o.lens_class,
                            "mean_grade": repr(o.mean_grade), "n_graders": o.n_graders})
    with atomic_write(folder / "labels.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "object", "class", "mean_grade", "n_graders"])
        writer.writeheader()
        writer.writerows(listing)
    return Labelled(folder, counts["train_lenses"], counts["train_nonlenses"], skipped)


def load_objects(db_path: Path) -> list[GradedObject]:
    """The graded objects of a grades database; refuses one that holds no grades."""
    db = GradesDB(db_path, create=False)
    objects = graded_objects(db.grades())
    if not objects:
        raise InputError(f"{db_path}: holds no grades yet; grade with `lensfinder inspect CATALOG --db {db_path}`")
    return objects
