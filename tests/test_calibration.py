import pytest
import numpy as np
import torch

from probe_md.calibration import fit_temperature_and_bias
from probe_md.metrics import expected_calibration_error


def test_calibration_lowers_ece_on_overconfident_shifted_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, 4000)
    labels = rng.random(4000) < 1 / (1 + np.exp(-true_logits))
    distorted = 4.0 * true_logits + 3.0  # over-confident and biased towards "reliable"
    p_before = 1 / (1 + np.exp(-distorted))
    temperature, bias = fit_temperature_and_bias(torch.tensor(distorted), torch.tensor(labels))
    p_after = 1 / (1 + np.exp(-(distorted + bias) / temperature))
    ece_before = expected_calibration_error(p_before, labels)
    ece_after = expected_calibration_error(p_after, labels)
    assert ece_after < 0.03 < ece_before
    assert abs(temperature - 4.0) < 0.5 and abs(bias + 3.0) < 0.5


# --- recalibration: temperature + bias or isotonic, chosen by held-out NLL -------------------
from probe_md.calibration import (  # noqa: E402
    LogitMap,
    binary_nll,
    choose_logit_map,
    fit_isotonic,
)


def labels_from(true_logits, seed):
    return np.random.default_rng(seed).random(len(true_logits)) < 1 / (1 + np.exp(-true_logits))


def test_isotonic_knots_are_monotone_and_finite():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 500)
    fitted = fit_isotonic(logits, labels_from(logits, 2))
    assert fitted.kind == "isotonic" and len(fitted.knots_x) > 2
    assert np.all(np.diff(fitted.knots_x) > 0) and np.all(np.diff(fitted.knots_y) >= 0)
    assert np.all(np.isfinite(fitted.knots_y))
    grid = np.linspace(-20, 20, 401)
    assert np.all(np.diff(fitted.apply(grid)) >= 0)  # monotone everywhere, flat beyond the ends


def test_temperature_wins_on_few_frames_and_isotonic_on_a_non_sigmoid_distortion():
    rng = np.random.default_rng(3)
    true_logits = rng.normal(0, 2, 30)
    few = choose_logit_map(3 * true_logits + 2, labels_from(true_logits, 4))
    assert few.chosen.kind == "temperature" and set(few.held_out_nll) == {"temperature"}

    true_logits = rng.normal(0, 2, 3000)
    labels = labels_from(true_logits, 5)
    distorted = np.sign(true_logits) * np.abs(true_logits) ** 3  # no affine map undoes a cube
    many = choose_logit_map(distorted, labels)
    assert many.chosen.kind == "isotonic"
    assert many.held_out_nll["isotonic"] < many.held_out_nll["temperature"]
    # out-of-fold probabilities are calibrated on frames the map never saw
    p_out = 1 / (1 + np.exp(-many.out_of_fold_logits))
    assert expected_calibration_error(p_out, labels) < 0.03


def test_recalibration_fixes_an_overconfident_shift_with_100_frames():
    rng = np.random.default_rng(6)
    true_logits = rng.normal(-0.5, 2, 100)
    labels = labels_from(true_logits, 7)
    choice = choose_logit_map(4 * true_logits + 3, labels)  # over-confident, biased to "reliable"
    assert binary_nll(choice.out_of_fold_logits, labels) < binary_nll(4 * true_logits + 3, labels)
    fresh_logits = rng.normal(-0.5, 2, 5000)  # frames of the same regime the fit never saw
    fresh_labels = labels_from(fresh_logits, 8)
    ece_before = expected_calibration_error(1 / (1 + np.exp(-(4 * fresh_logits + 3))), fresh_labels)
    ece_after = expected_calibration_error(1 / (1 + np.exp(-choice.chosen.apply(4 * fresh_logits + 3))), fresh_labels)
    assert ece_before > 0.15 and ece_after < 0.05


def test_one_class_frames_are_refused():
    with pytest.raises(ValueError, match="at least 2 reliable and 2 unreliable"):
        choose_logit_map(np.arange(10.0), np.array([True] * 9 + [False]))


def test_logit_map_apply_matches_its_definition():
    fitted = LogitMap("temperature", temperature=2.0, bias=1.0)
    np.testing.assert_allclose(fitted.apply(np.array([1.0, -3.0])), [1.0, -1.0])


def test_isotonic_blocks_of_one_class_are_smoothed_not_certain():
    logits = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    labels = np.array([False, False, False, True, False, True, True, True])
    fitted = fit_isotonic(logits, labels)
    p = 1 / (1 + np.exp(-np.array(fitted.knots_y)))
    np.testing.assert_allclose(p, [0.5 / 4, 0.5, 3.5 / 4])  # blocks: 3 unreliable, 1 + 1 mixed, 3 reliable
    assert np.all(np.diff(fitted.knots_y) > 0)


def test_a_few_separated_frames_do_not_make_the_map_certain():
    """20 frames the logit separates: the plain fit sends the temperature towards 0 (T = 0.03
    here: every probability 0 or 1); the prior on the map keeps the frames nearest the
    boundary uncertain."""
    from probe_md.calibration import fit_logit_map

    logits = np.r_[np.linspace(-3.0, -0.5, 10), np.linspace(0.5, 3.0, 10)]
    labels = logits > 0
    mapped = 1 / (1 + np.exp(-fit_logit_map("temperature", logits, labels).apply(logits)))
    nearest = np.abs(logits) == 0.5
    assert np.all((mapped[nearest] > 0.1) & (mapped[nearest] < 0.9)), mapped[nearest]
    assert np.all(np.diff(mapped) > 0)  # still a ranking, no ties from saturation


def test_recalibration_needs_enough_frames():
    from probe_md.calibration import MIN_FRAMES_FOR_RECALIBRATION

    n = MIN_FRAMES_FOR_RECALIBRATION - 1
    logits = np.linspace(-2.0, 2.0, n)
    with pytest.raises(ValueError, match=f"at least {MIN_FRAMES_FOR_RECALIBRATION} labelled frames, got {n}"):
        choose_logit_map(logits, np.arange(n) % 2 == 0)
    choose_logit_map(np.linspace(-2.0, 2.0, n + 1), np.arange(n + 1) % 2 == 0)  # enough: no error


def test_an_extra_candidate_competes_on_the_same_folds_and_can_win():
    """A candidate that is not a map of the base logit (here: the true logits, whatever it is
    fitted on) is scored out of fold like the others; when it wins, `chosen` is left to its owner."""
    rng = np.random.default_rng(9)
    truth = rng.normal(0, 2, 300)
    labels = labels_from(truth, 10)
    fitted_on = []

    def oracle(rows):
        fitted_on.append(len(rows))
        return lambda held_out: truth[held_out]

    noisy = truth + rng.normal(0, 3, 300)  # a base logit that knows less than the oracle
    choice = choose_logit_map(noisy, labels, folds=5, extra={"oracle": oracle})
    assert choice.kind == "oracle" and choice.chosen is None
    assert set(choice.held_out_nll) == {"temperature", "isotonic", "oracle"}
    np.testing.assert_allclose(choice.out_of_fold_logits, truth)
    assert len(fitted_on) == 5 and sum(fitted_on) == 4 * 300  # each fold fitted on the other four
