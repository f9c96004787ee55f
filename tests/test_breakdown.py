"""The lens-finding breakdown: recall and the share of 1 - AUC per arc-S/N bin, read through the simulator's manifest."""

import csv

import numpy as np
import pytest

from lensfinder.data.layouts import Listing
from lensfinder.evaluate.evaluate import _breakdown


def test_breakdown_puts_the_auc_shortfall_on_the_faint_lens(tmp_path):
    # Three lenses (arc S/N 20, 150, 2000) and 20 non-lenses scored 0 .. 0.9; the faint lens scores below 15 of them.
    snr = [20.0, 150.0, 2000.0] + [0.0] * 20
    scores = np.array([0.2, 0.95, 0.99] + list(np.linspace(0.0, 0.9, 20)))
    labels = np.array([1, 1, 1] + [0] * 20)
    paths = [tmp_path / f"{'lens' if y else 'nonlens'}_{i}.npy" for i, y in enumerate(labels)]
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "theta_e_arcsec", "arc_snr"])
        writer.writerows([[p.name, 1.0 if y else 0.0, s] for p, y, s in zip(paths, labels, snr)])
    listing = Listing(paths, labels, ["nonlens", "lens"], tmp_path)

    bins = {b["lo"]: b for b in _breakdown(tmp_path, listing, scores)["arc_snr"]}

    assert [bins[lo]["n_lenses"] for lo in (0.0, 100.0, 1000.0)] == [1, 1, 1]
    assert bins[0.0]["recall_tpr10"] == 0.0 and bins[100.0]["recall_tpr10"] == 1.0
    assert bins[0.0]["auc_loss_share"] == pytest.approx(1.0)  # the only lens ranked below non-lenses
    assert bins[100.0]["auc_loss_share"] == 0.0 and bins[50.0]["n_lenses"] == 0
