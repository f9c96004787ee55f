import numpy as np
import pytest

from lensfinder import metrics as M


def test_roc_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.6, 0.1: of the 4 pairs, 3 are ordered correctly.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.6, 0.4, 0.1])
    assert M.roc_auc(labels, scores) == pytest.approx(0.75)
    fpr, tpr, thr = M.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1.0, 1.0])


def test_roc_auc_ties_count_half():
    assert M.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx(0.75)


def test_roc_needs_both_classes():
    with pytest.raises(ValueError):
        M.roc_auc([1, 1], [0.2, 0.3])


def test_average_precision_hand_computed():
    # ranked: P(0.9) N(0.6) P(0.4) N(0.1): AP = 0.5 * 1 + 0.5 * 2/3
    assert M.average_precision([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1]) == pytest.approx(0.5 + 1 / 3)


def test_tpr0_and_tpr10_hand_computed():
    rng = np.random.default_rng(0)
    negatives = np.linspace(0.0, 0.5, 100)  # highest negatives 0.5, ..., the 10th highest is 0.5 - 9 * 0.5/99
    tenth = np.sort(negatives)[::-1][9]
    positives = np.array([0.99, 0.8, 0.49, tenth + 1e-6, tenth, 0.1])
    labels = np.r_[np.ones(len(positives)), np.zeros(100)]
    scores = np.r_[positives, negatives]
    order = rng.permutation(len(scores))
    labels, scores = labels[order], scores[order]
    assert M.tpr_before_false_positives(labels, scores, 1) == pytest.approx(2 / 6)   # TPR0: 0.99 and 0.8 beat every negative
    assert M.tpr_before_false_positives(labels, scores, 10) == pytest.approx(4 / 6)  # TPR10: strictly above the 10th negative
    assert M.tpr_before_false_positives([1, 0], [0.1, 0.9], 10) == 1.0  # fewer than ten negatives: never reached
    with pytest.raises(ValueError, match="TPR0 is n_false=1"):
        M.tpr_before_false_positives(labels, scores, 0)


def test_tpr_at_fpr():
    labels = np.r_[np.ones(4), np.zeros(10)]
    scores = np.r_[[0.95, 0.9, 0.5, 0.2], np.linspace(0.0, 0.85, 10)]
    assert M.tpr_at_fpr(labels, scores, 0.0) == pytest.approx(0.5)
    assert M.tpr_at_fpr(labels, scores, 0.45) == pytest.approx(0.75)  # 0.5 beats 6 of 10 negatives: fpr 0.4


def test_ovr_auc_macro_weighted_micro():
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    result = M.roc_auc_ovr(labels, probs)
    # class 1: positive 0.7 vs negatives 0.1, 0.6, 0.2 -> 1.0; class 0: 0.8,0.3 vs 0.2,0.1 -> 1.0; class 2 -> 1.0
    assert result["per_class"] == pytest.approx([1.0, 1.0, 1.0])
    labels2 = np.array([0, 1, 2, 0])
    probs2 = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])
    r2 = M.roc_auc_ovr(labels2, probs2)
    c0 = M.roc_auc([1, 0, 0, 1], probs2[:, 0])
    assert c0 == pytest.approx(0.25)  # positives 0.5, 0.1 vs negatives 0.6, 0.2: one of four pairs right
    assert r2["macro"] == pytest.approx(np.mean(r2["per_class"]))
    assert r2["weighted"] == pytest.approx(np.average(r2["per_class"], weights=[2, 1, 1]))


def test_classification_report_matches_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 2, 2])
    rep = M.classification_report(labels, predicted, ["a", "b", "c"])
    assert rep["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert rep["b"]["precision"] == pytest.approx(0.5) and rep["b"]["recall"] == pytest.approx(0.5)
    assert rep["c"]["precision"] == pytest.approx(0.5) and rep["c"]["recall"] == pytest.approx(1.0)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["macro avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert rep["weighted avg"]["recall"] == pytest.approx(4 / 6)
    np.testing.assert_array_equal(M.confusion_matrix(labels, predicted, 3), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_reliability_and_ece():
    labels = np.array([1, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    rel = M.reliability(labels, probs, n_bins=2)
    # bin [0, .5): p=0.1 (neg), 0.2 (pos): predicted 0.15, observed 0.5; bin [.5, 1]: 0.9, 0.7 both pos: 0.8 vs 1.0
    assert rel["count"] == [2, 2]
    assert rel["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.2)


def test_threshold_chooser():
    labels = np.r_[np.ones(5), np.zeros(1000)]
    scores = np.r_[[0.99, 0.98, 0.97, 0.5, 0.3], np.linspace(0, 0.6, 1000)]
    budget = M.choose_threshold(labels, scores, max_false_per_million=0)
    assert budget["threshold"] == pytest.approx(0.97) and budget["completeness"] == pytest.approx(0.6)
    loose = M.choose_threshold(labels, scores, max_false_per_million=200_000)  # up to 200 negatives of 1000
    assert loose["completeness"] == pytest.approx(0.8) and loose["false_per_million"] <= 200_000
    pure = M.choose_threshold(labels, scores, target_purity=0.5, prevalence=0.5)
    assert pure["purity"] >= 0.5
    with pytest.raises(ValueError):
        M.choose_threshold(labels, scores)


def test_ranking_losses_hand_computed_and_average_to_one_minus_auc():
    # positives 0.9, 0.4; negatives 0.6, 0.1: nothing outranks 0.9, one of two negatives outranks 0.4.
    np.testing.assert_allclose(M.ranking_losses([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1]), [0.0, 0.5])
    np.testing.assert_allclose(M.ranking_losses([1, 0], [0.5, 0.5]), [0.5])  # a tie counts half
    rng = np.random.default_rng(3)
    labels = rng.uniform(size=500) < 0.2
    scores = np.round(rng.normal(labels.astype(float), 1.0), 1)  # rounded: many ties
    assert M.ranking_losses(labels, scores).mean() == pytest.approx(1 - M.roc_auc(labels, scores), abs=1e-12)
    with pytest.raises(ValueError):
        M.ranking_losses([1, 1], [0.2, 0.3])


def test_ece_of_a_known_miscalibrated_toy_and_its_recalibration():
    # 1000 cutouts all scored 0.9 of which half are lenses: ECE = |0.5 - 0.9| = 0.4 exactly; one bin is filled.
    labels = np.r_[np.ones(500, int), np.zeros(500, int)]
    probs = np.tile([0.1, 0.9], (1000, 1))
    rel = M.reliability(labels, probs)
    assert rel["ece"] == pytest.approx(0.4) and rel["count"][9] == 1000
    # Three classes, top-label confidence 0.8 but accuracy 0.5: ECE 0.3.
    three = np.tile([0.8, 0.1, 0.1], (10, 1))
    assert M.reliability(np.r_[np.zeros(5, int), np.ones(5, int)], three)["ece"] == pytest.approx(0.3)
    # Temperature and bias fitted on it remove the miscalibration: every probability becomes 0.5.
    import torch

    from lensfinder.train.calibrate import apply_to_log_probs, fit_calibration

    log_probs = torch.log(torch.as_tensor(probs))
    cal = fit_calibration(log_probs, torch.as_tensor(labels))
    fixed = torch.softmax(apply_to_log_probs(log_probs, cal["scale"], cal["bias"]), 1).numpy()
    assert M.reliability(labels, fixed)["ece"] < 1e-4


def test_log_odds_does_not_saturate_where_probabilities_round_to_one():
    margins = np.array([30.0, 40.0, 60.0, 700.0])  # p = 1 - e^-m: all 1.0 in float64 beyond m = 37
    logits = np.stack([np.zeros(4), margins], 1)
    np.testing.assert_allclose(M.log_odds(logits, positive=1), margins)
    np.testing.assert_allclose(M.log_odds(logits, positive=0), -margins)
    np.testing.assert_allclose(M.log_odds(logits), margins)  # default: the predicted class
    # three classes: log p_k - log(1 - p_k), from logsumexp of the others
    three = np.array([[2.0, 0.0, 0.0]])
    assert M.log_odds(three, positive=0)[0] == pytest.approx(2.0 - np.log(2.0))


def test_thresholds_chosen_on_one_split_and_applied_to_another():
    val_labels = np.r_[np.ones(4), np.zeros(1000)]
    val_scores = np.r_[[9.0, 8.0, 3.0, 1.0], np.linspace(-5.0, 2.5, 1000)]
    chosen = M.choose_thresholds(val_labels, val_scores)
    assert set(chosen) == set(M.THRESHOLD_GOALS)
    # At most 100 false per 10^6 of 1000 negatives: none admitted, so the cut sits at 3.0 (the lowest lens above 2.5).
    assert chosen["false_per_million_100"]["threshold"] == 3.0 and chosen["false_per_million_100"]["completeness"] == 0.75
    # Applied to other data, the same cut (score >= threshold) finds what it finds there.
    test_labels = np.r_[np.ones(5), np.zeros(4)]
    test_scores = np.r_[[10.0, 3.0, 2.9, 0.0, -1.0], [3.5, 3.0, 1.0, -2.0]]
    point = M.operating_point(test_labels, test_scores, 3.0, prevalence=0.5)
    assert point["completeness"] == pytest.approx(2 / 5) and point["false_per_million"] == pytest.approx(0.5e6)
    assert point["purity"] == pytest.approx(0.4 / (0.4 + 0.5))
    assert M.operating_point(test_labels, test_scores, None)["completeness"] == 0.0
