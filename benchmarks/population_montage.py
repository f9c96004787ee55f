"""Montage of the lens-finding population: one row per confuser family, artefact and lens kind, each
drawn alone (g, r, i as a Lupton asinh RGB composite). Writes docs/figures/population_<preset>.png.

    python benchmarks/population_montage.py [--preset lsst-gri] [--per-row 8]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402

from lensfinder.simulate import population as pop  # noqa: E402
from lensfinder.simulate.engine import LensfindingSimulator  # noqa: E402
from lensfinder.simulate.presets import load_preset  # noqa: E402
from lensfinder.simulate.writer import lensfinding_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _rows(preset: dict) -> list[tuple[str, dict, bool]]:
    """(title, preset variant, is_lens) for every family drawn alone."""
    quiet = copy.deepcopy(preset)
    quiet["artefacts"] = {}
    rows = []
    for family in pop.confuser_families(preset):
        p = pop.select_confusers(quiet, [family])
        p["nonlens_mix"] = {"confuser": 1.0}
        rows.append((f"non-lens: {family}", p, False))
    for kind in preset["artefacts"]:
        p = copy.deepcopy(preset)
        p["artefacts"] = {kind: dict(preset["artefacts"][kind], probability=1.0)}
        p["nonlens_mix"] = {"elliptical": 0.5, "disk": 0.5}
        rows.append((f"artefact: {kind}", p, False))
    for kind in preset["lens_deflector_mix"]:
        p = copy.deepcopy(quiet)
        p["lens_deflector_mix"] = {kind: 1.0}
        p["quasar"]["fraction"] = 0.0
        rows.append((f"lens: {kind} deflector", p, True))
    p = copy.deepcopy(quiet)
    p["quasar"]["fraction"] = 1.0
    rows.append(("lens: quasar source", p, True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lsst-gri")
    parser.add_argument("--per-row", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    preset = load_preset(args.preset, task="lensfinding")
    rows = _rows(preset)
    fig, axes = plt.subplots(len(rows), args.per_row, figsize=(1.3 * args.per_row, 1.4 * len(rows)))
    for r, (title, variant, is_lens) in enumerate(rows):
        sim = LensfindingSimulator(variant)
        rngs = [pop.object_rngs(r, "lensfinding", "test", int(is_lens), i) for i in range(args.per_row)]
        params = [pop.sample_lensfinding(g[0], is_lens, variant) for g in rngs]
        images, _ = lensfinding_rows(sim, params, sim.render(params), [g[1] for g in rngs])
        for c, img in enumerate(images):
            g, rr, i = (np.clip(b, 0, None) for b in img)
            axes[r, c].imshow(make_lupton_rgb(i, rr, g, stretch=0.5, Q=8), origin="lower")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title.split(": ")[1], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"lensfinder population, preset {args.preset}: each row one family drawn alone", fontsize=9)
    fig.tight_layout()
    out = args.out or ROOT / "docs" / "figures" / f"population_{args.preset}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
