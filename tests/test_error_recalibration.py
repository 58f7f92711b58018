"""probe_md.error_recalibration: the predicted error's median and spread refitted on labelled
errors, and `calibrate` choosing that map when it holds."""

import copy
import math

import numpy as np
import pytest
import torch

from probe_md.error_prediction import PooledStructures
from probe_md.error_recalibration import (
    ErrorShift,
    ErrorTerms,
    apply_error_shift,
    error_terms,
    fit_error_shift,
    reads_its_error,
)
from probe_md.head import NORMAL_Z90, HeadConfig, ProbeHead
from probe_md.recalibration import refit_calibration


def split_logistic(median, lower, upper, shift, scale, rng):
    """log errors drawn from the model ErrorShift describes: a logistic on each side of
    median + shift, each side's spread (half-width / z90) times `scale`."""
    z = rng.logistic(size=len(median))
    width = np.where(z < 0, lower, upper)
    return median + shift + z * scale * width / NORMAL_Z90


def test_fit_recovers_a_known_shift_and_spread():
    rng = np.random.default_rng(0)
    n = 20000
    median = rng.normal(-3.5, 0.5, n)
    lower, upper = rng.uniform(0.2, 0.6, n), rng.uniform(0.3, 0.9, n)
    terms = ErrorTerms(median, lower, upper, split_logistic(median, lower, upper, 0.3, 0.25, rng), -3.4, NORMAL_Z90)
    fitted = fit_error_shift(terms, np.arange(n))
    assert fitted.shift == pytest.approx(0.3, abs=0.01)
    assert fitted.scale == pytest.approx(0.25, rel=0.05)
    # P(error < threshold) under the fitted map is the model's own probability
    p = 1 / (1 + np.exp(-fitted.logits(terms, np.arange(n))))
    below = terms.log_error < terms.log_threshold
    assert abs(p.mean() - below.mean()) < 0.01


def synthetic_head(seed: int = 0) -> tuple[ProbeHead, PooledStructures]:
    """A head with a predicted error whose probability comes from it, and pooled vectors of 400
    structures (64 atoms each)."""
    torch.manual_seed(seed)
    config = HeadConfig(feature_dim=8, hidden_dim=16, num_heads=2, value_dim=4, readout_hidden_dim=16)
    head = ProbeHead(config).double().eval()
    head.error_fitted.fill_(1.0)
    head.logit_from_error.fill_(1.0)
    pooled = PooledStructures(torch.randn(400, 8, dtype=torch.float64) * 2, torch.full((400,), 64.0, dtype=torch.float64))
    with torch.no_grad():
        median = head.readout_log_error(*pooled, widened=False)[:, 1]
    head.log_threshold.fill_(float(median.median()) + 0.2)
    return head, pooled


def test_the_heads_logit_after_apply_is_the_maps_logit():
    head, pooled = synthetic_head()
    assert reads_its_error(head)
    terms = error_terms(head, pooled, np.ones(400), threshold=math.exp(float(head.log_threshold)))
    fitted = ErrorShift(shift=0.3, scale=0.4)
    shifted = copy.deepcopy(head)
    apply_error_shift(shifted, fitted)
    with torch.no_grad():
        np.testing.assert_allclose(shifted.readout_logit(*pooled).numpy(), fitted.logits(terms, np.arange(400)),
                                   rtol=1e-9, atol=1e-9)
        before, after = head.readout_log_error(*pooled), shifted.readout_log_error(*pooled)
    np.testing.assert_allclose((after - before).numpy(), 0.3, atol=1e-12)  # the whole interval moves with it


def test_calibrate_chooses_the_error_map_where_the_errors_follow_it():
    """Errors drawn 0.4 above the predicted median with a third of its spread: temperature +
    bias cannot move each structure by its own spread, the error map can; it wins the held-out
    NLL, the head is rewritten to it, and the interval moves to the errors (80 % out of fold)."""
    head, pooled = synthetic_head(1)
    with torch.no_grad():
        bounds = head.readout_log_error(*pooled, widened=False, for_interval=False).double().numpy()
    median = bounds[:, 1]
    rng = np.random.default_rng(2)
    log_error = split_logistic(median, median - bounds[:, 0], bounds[:, 2] - median, 0.4, 0.3, rng)
    threshold = math.exp(float(head.log_threshold))
    report = refit_calibration(head, pooled, np.exp(log_error), threshold)
    assert report["chosen"] == "error", report["held_out_nll"]
    assert report["held_out_nll"]["error"] < min(report["held_out_nll"]["temperature"], report["held_out_nll"]["isotonic"])
    assert report["error_shift"]["log_shift"] == pytest.approx(0.4, abs=0.05)
    assert report["ece_after_out_of_fold"] < 0.06 < report["ece_before"]
    assert 0.72 <= report["interval_coverage_after_out_of_fold"] <= 0.88
    with torch.no_grad():
        p = torch.sigmoid(head.readout_logit(*pooled)).numpy()
    assert abs(p.mean() - np.mean(log_error < np.log(threshold))) < 0.03


def test_a_head_that_does_not_read_its_error_keeps_the_label_maps_chosen_by_nll():
    head, pooled = synthetic_head(3)
    head.logit_from_error.fill_(0.0)  # the classifier's logit (older heads, heads trained on labels)
    assert not reads_its_error(head)
    with torch.no_grad():
        median = head.readout_log_error(*pooled, widened=False)[:, 1].numpy()
    errors = np.exp(median + np.random.default_rng(4).normal(0.0, 0.3, len(median)))
    report = refit_calibration(head, pooled, errors, math.exp(float(head.log_threshold)))
    assert set(report["held_out_nll"]) == {"temperature", "isotonic"} and "error_shift" not in report
    assert report["chosen"] == min(report["held_out_nll"], key=report["held_out_nll"].get)
