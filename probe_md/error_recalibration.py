"""Recalibrating a head through its predicted error: the median and the spread, refitted on
the labelled frames' actual errors.

A head with a predicted error takes its probability from it: P(error < threshold) is a
logistic CDF of log(error) around the predicted median, with the spread on each side from the
80 % half-widths (`ProbeHead.error_margin`). In a new regime the median can sit off and the
spread be too wide (equilibrated MD varies less than the training pool). Each labelled frame
gives its error, not only which side of the threshold it fell, so two numbers are fitted
robustly from every frame: the shift of the median (the median log residual) and the scale of
the spread (the median |standardised residual| over that of a logistic, ln 3). On a
retraining round's regime (benchmarks/quality/calibrate_split.py) this calibrated from ~100
frames what temperature + bias fitted on the labels did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from probe_md.error_prediction import PooledStructures, log_errors
from probe_md.head import ProbeHead

KIND = "error"
LOGISTIC_MEDIAN_ABS = math.log(3.0)  # the median |z| of a standard logistic
MIN_SCALE = 1e-2  # a spread of identical residuals would make every probability 0 or 1
MIN_HALF_WIDTH = 1e-6  # as ProbeHead.error_margin clamps it


@dataclass(frozen=True)
class ErrorTerms:
    """What the head's margin is made of, per structure, and the actual errors."""

    median: np.ndarray  # [G] predicted median log error
    lower_width: np.ndarray  # [G] raw 10-50 % and 50-90 % half-widths (log), as the margin reads them
    upper_width: np.ndarray
    log_error: np.ndarray  # [G] log of the actual error, floored like the readout's targets
    log_threshold: float
    z90: float

    def take(self, rows: np.ndarray) -> "ErrorTerms":
        """The terms of these structures only."""
        return replace(self, median=self.median[rows], lower_width=self.lower_width[rows],
                       upper_width=self.upper_width[rows], log_error=self.log_error[rows])


@dataclass(frozen=True)
class ErrorShift:
    """log(error) ~ median + shift, with each side's spread times `scale`."""

    shift: float
    scale: float
    kind: str = KIND

    def logits(self, terms: ErrorTerms, rows: np.ndarray) -> np.ndarray:
        """The head's logit after `apply_error_shift`: the margin below the threshold."""
        median = terms.median[rows] + self.shift
        below = terms.log_threshold < median
        width = np.where(below, terms.lower_width[rows], terms.upper_width[rows])
        return (terms.log_threshold - median) * terms.z90 / (np.maximum(width, MIN_HALF_WIDTH) * self.scale)


def reads_its_error(head: ProbeHead) -> bool:
    """Whether the head's probability comes from its predicted error (and so can be recalibrated here)."""
    return float(head.error_fitted) > 0.5 and float(head.logit_from_error) > 0.5


def error_terms(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray, threshold: float) -> ErrorTerms:
    with torch.no_grad():
        bounds = head.readout_log_error(*pooled, widened=False, for_interval=False).double().numpy()
    median = bounds[:, 1]
    return ErrorTerms(median, median - bounds[:, 0], bounds[:, 2] - median,
                      log_errors(errors, threshold).double().numpy(), float(head.log_threshold), float(head.normal_z90))


def fit_error_shift(terms: ErrorTerms, rows: np.ndarray) -> ErrorShift:
    """Median of the log residuals; each residual over its side's spread, median |.| / ln 3."""
    residual = terms.log_error[rows] - terms.median[rows]
    shift = float(np.median(residual))
    centred = residual - shift
    width = np.where(centred < 0, terms.lower_width[rows], terms.upper_width[rows])
    standardised = centred * terms.z90 / np.maximum(width, MIN_HALF_WIDTH)
    return ErrorShift(shift, max(float(np.median(np.abs(standardised))) / LOGISTIC_MEDIAN_ABS, MIN_SCALE))


def error_shift_fitter(terms: ErrorTerms) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The candidate for calibration.choose_logit_map's `extra`."""
    def fitter(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        fitted = fit_error_shift(terms, rows)
        return lambda held_out: fitted.logits(terms, held_out)

    return fitter


def apply_error_shift(head: ProbeHead, fitted: ErrorShift) -> None:
    """Shift the readout's median (the reported error, its interval and the margin all move) and
    make the logit margin / scale: temperature = scale, no bias, no knots."""
    dtype = head.temperature.dtype
    with torch.no_grad():
        head.error_readout[-1].bias[1] += fitted.shift
    head.temperature.fill_(fitted.scale)
    head.logit_bias.fill_(0.0)
    head.calibration_knots_x = torch.zeros(0, dtype=dtype)
    head.calibration_knots_y = torch.zeros(0, dtype=dtype)
