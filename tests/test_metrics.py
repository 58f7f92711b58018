"""Hand-computed cases for probe_md.metrics."""

import math

import numpy as np
import pytest

from probe_md import metrics


# ----------------------------------------------------------------------------- auroc / auprc


def test_auroc_four_samples_by_hand():
    # positive pairs won: 0.9 beats both negatives, 0.7 beats 0.6 only -> 3 of 4 pairs
    assert metrics.auroc([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(0.75)


def test_auroc_tie_counts_one_half():
    # pairs: 0.9>0.5, 0.9>0.1, 0.5=0.5 (1/2), 0.5>0.1 -> 3.5 / 4
    assert metrics.auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)


def test_auroc_is_order_invariant_and_inverts():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50)
    labels = rng.random(50) < 0.3
    perm = rng.permutation(50)
    value = metrics.auroc(scores, labels)
    assert metrics.auroc(scores[perm], labels[perm]) == pytest.approx(value)
    assert metrics.auroc(-scores, labels) == pytest.approx(1 - value)


def test_average_precision_by_hand():
    # k=1: P=1, R=1/2; k=2: P=1/2, R=1/2; k=3: P=2/3, R=1 -> 1/2*1 + 0 + 1/2*2/3
    ap = metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_average_precision_tied_scores_enter_together():
    # threshold 0.9: P=1, R=1/2; threshold 0.5 (one pos + one neg together): P=2/3, R=1
    ap = metrics.average_precision([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # the result must not depend on which tied sample comes first
    assert metrics.average_precision([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(ap)


def test_perfect_ranking_gives_one():
    assert metrics.auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert metrics.average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_gives_nan(labels):
    assert math.isnan(metrics.auroc([0.1, 0.2, 0.3], labels))
    assert math.isnan(metrics.average_precision([0.1, 0.2, 0.3], labels))


# ----------------------------------------------------------------------------- risk–coverage


def test_risk_coverage_by_hand():
    coverage, risk = metrics.risk_coverage([4, 3, 2, 1], [0, 1, 0, 1])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 2])


def test_aurc_perfect_and_worst_ranking():
    is_error = [0, 0, 1, 1]
    # perfect: errors accepted last -> risks 0, 0, 1/3, 1/2
    assert metrics.aurc([4, 3, 2, 1], is_error) == pytest.approx((1 / 3 + 1 / 2) / 4)
    # worst: errors accepted first -> risks 1, 1, 2/3, 1/2
    assert metrics.aurc([1, 2, 3, 4], is_error) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)


def test_risk_coverage_ties_use_expected_risk_not_input_order():
    # all tied: any order is equally likely, so every coverage has the base error rate
    _, risk = metrics.risk_coverage([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0])
    np.testing.assert_allclose(risk, [0.25, 0.25, 0.25, 0.25])
    _, risk_reordered = metrics.risk_coverage([0.5, 0.5, 0.5, 0.5], [0, 0, 0, 1])
    np.testing.assert_allclose(risk_reordered, risk)


def test_risk_coverage_partial_tie_group():
    # most confident is correct; then a tie group of 2 with one error
    _, risk = metrics.risk_coverage([0.9, 0.5, 0.5], [0, 1, 0])
    np.testing.assert_allclose(risk, [0.0, 0.5 / 2, 1 / 3])


def test_selective_risk_picks_ceil_coverage():
    confidence = np.arange(10, 0, -1)  # descending: accepted in input order
    is_error = np.array([0] * 7 + [1] * 3)
    assert metrics.selective_risk(confidence, is_error, 0.8) == pytest.approx(1 / 8)
    assert metrics.selective_risk(confidence, is_error, 0.9) == pytest.approx(2 / 9)
    assert metrics.selective_risk(confidence, is_error, 0.75) == pytest.approx(1 / 8)
    assert metrics.selective_risk(confidence, is_error, 1.0) == pytest.approx(0.3)


def test_selective_risk_rejects_bad_coverage():
    with pytest.raises(ValueError, match="coverage must lie in"):
        metrics.selective_risk([1, 2], [0, 1], 0.0)


# ----------------------------------------------------------------------------- calibration


def test_ece_zero_for_perfectly_calibrated_bins():
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert metrics.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_miscalibration():
    # bin of p=0.9 holds 6/10 reliable (gap 0.3); bin of p=0.1 holds 1/10 (gap 0) -> 0.15
    p = [0.9] * 10 + [0.1] * 10
    y = [1] * 6 + [0] * 4 + [1] * 1 + [0] * 9
    assert metrics.expected_calibration_error(p, y, n_bins=15) == pytest.approx(0.15)


def test_reliability_diagram_bins_and_edges():
    diagram = metrics.reliability_diagram([0.0, 0.1, 0.55, 1.0], [0, 0, 1, 1], n_bins=2)
    np.testing.assert_allclose(diagram.bin_centers, [0.25, 0.75])
    np.testing.assert_array_equal(diagram.counts, [2, 2])  # p = 1.0 lands in the last bin
    np.testing.assert_allclose(diagram.confidence, [0.05, 0.775])
    np.testing.assert_allclose(diagram.accuracy, [0.0, 1.0])


def test_reliability_diagram_empty_bins_are_nan():
    diagram = metrics.reliability_diagram([0.05, 0.95], [0, 1], n_bins=4)
    np.testing.assert_array_equal(diagram.counts, [1, 0, 0, 1])
    assert np.isnan(diagram.accuracy[1]) and np.isnan(diagram.confidence[2])


def test_probability_outside_unit_interval_rejected():
    with pytest.raises(ValueError, match=r"p_reliable must lie in \[0, 1\]"):
        metrics.expected_calibration_error([0.5, 1.2], [1, 0])


# ----------------------------------------------------------------------------- error correlation


def test_spearman_values_and_constant_input():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    assert isinstance(metrics.spearman([1, 2, 3], [3, 1, 2]), float)


def test_binned_error_monotone_detection():
    p = np.linspace(0.05, 0.95, 10)
    falling = metrics.binned_error_by_probability(p, 1.0 - p, n_bins=5)
    assert falling.is_monotone
    np.testing.assert_array_equal(falling.counts, [2, 2, 2, 2, 2])
    np.testing.assert_allclose(falling.error_mean, 1.0 - falling.p_mean)

    error = 1.0 - p
    error[-2:] = 5.0  # the most confident bin has the largest error
    assert not metrics.binned_error_by_probability(p, error, n_bins=5).is_monotone


def test_binned_error_keeps_ties_together():
    p = [0.2, 0.2, 0.2, 0.2, 0.9, 0.9]
    binned = metrics.binned_error_by_probability(p, [1, 1, 1, 1, 0, 0], n_bins=3)
    np.testing.assert_array_equal(binned.counts, [4, 2])
    np.testing.assert_allclose(binned.error_mean, [1.0, 0.0])


# ----------------------------------------------------------------------------- summary + validation


def test_summarize_scores_uses_unreliable_as_positive():
    score = np.arange(10.0)  # high score = unreliable
    is_reliable = score < 7  # the three highest scores are unreliable: a perfect ranking
    error = score**2
    row = metrics.summarize_scores("probe", score, is_reliable, error)
    assert row[metrics.NAME] == "probe"
    assert row[metrics.AUROC] == 1.0
    assert row[metrics.AUPRC] == 1.0
    assert row[metrics.AURC] == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 10)
    assert row[metrics.SELECTIVE_RISK_80] == pytest.approx(1 / 8)
    assert row[metrics.SELECTIVE_RISK_90] == pytest.approx(2 / 9)
    assert row[metrics.SPEARMAN_ERROR] == pytest.approx(1.0)


def test_summarize_scores_one_class_is_nan_not_crash():
    row = metrics.summarize_scores("x", [0.1, 0.2, 0.3], [True, True, True], [0.1, 0.2, 0.3])
    assert math.isnan(row[metrics.AUROC]) and math.isnan(row[metrics.AUPRC])
    assert row[metrics.AURC] == 0.0


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, 0.2], [1, 0, 1], "same length"),
        ([], [], "is empty"),
        ([0.1, np.nan], [1, 0], "nan or inf"),
        ([0.1, np.inf], [1, 0], "nan or inf"),
        ([[0.1, 0.2]], [[1, 0]], "must be 1-D"),
        ([0.1, 0.2], [1, 2], "boolean"),
    ],
)
def test_bad_input_raises(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.auroc(scores, labels)
