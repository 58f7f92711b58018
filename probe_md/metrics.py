"""Metrics for reliability scores: ranking, selective prediction, calibration.

Conventions: "unreliable" is the positive class. A `score` is higher = more likely
unreliable; a `confidence` is higher = more likely reliable; `p_reliable` is a calibrated
probability of reliable; `is_reliable` / `is_error` / `positives` are boolean labels;
`error` is the actual per-structure MLIP error. Degenerate inputs (one class only,
constant input) give nan rather than an exception; malformed inputs raise ValueError.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
from scipy import stats

# Keys of summarize_scores(); every value is a float except NAME.
NAME: Final[str] = "name"
AUROC: Final[str] = "auroc"  # unreliable = positive, higher score = more unreliable
AUPRC: Final[str] = "auprc"  # average precision of detecting unreliable structures
AURC: Final[str] = "aurc"  # mean selective risk over all coverage levels (lower is better)
SELECTIVE_RISK_80: Final[str] = "selective_risk_at_0.8"  # unreliable fraction of the 80% most confident
SELECTIVE_RISK_90: Final[str] = "selective_risk_at_0.9"
SPEARMAN_ERROR: Final[str] = "spearman_score_vs_error"  # rank correlation of score with actual error


class ReliabilityDiagram(NamedTuple):
    """Equal-width bins of p_reliable; confidence/accuracy are nan in empty bins."""

    bin_centers: np.ndarray  # [n_bins]
    confidence: np.ndarray  # [n_bins] mean p_reliable in the bin
    accuracy: np.ndarray  # [n_bins] fraction reliable in the bin
    counts: np.ndarray  # [n_bins] int


class BinnedError(NamedTuple):
    """Mean actual error in quantile bins of p_reliable (empty bins dropped)."""

    p_mean: np.ndarray  # [n_bins_kept] mean p_reliable per bin, increasing
    error_mean: np.ndarray  # [n_bins_kept]
    counts: np.ndarray  # [n_bins_kept] int
    is_monotone: bool  # error non-increasing as p_reliable increases


# ----------------------------------------------------------------------------- validation


def _as_finite_1d(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one structure")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains nan or inf at index {int(np.argmin(np.isfinite(array)))}")
    return array


def _as_labels(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one structure")
    if array.dtype != np.bool_:
        numeric = np.asarray(array, dtype=np.float64)
        if not np.all((numeric == 0) | (numeric == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got values outside {{0, 1}}")
        array = numeric == 1
    return array


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def _as_probability(name: str, values) -> np.ndarray:
    array = _as_finite_1d(name, values)
    if np.any((array < 0) | (array > 1)):
        raise ValueError(f"{name} must lie in [0, 1], got range [{array.min():g}, {array.max():g}]")
    return array


# ----------------------------------------------------------------------------- ranking


def auroc(scores, positives) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic; ties count one half."""
    scores = _as_finite_1d("scores", scores)
    positives = _as_labels("positives", positives)
    _same_length(scores=scores, positives=positives)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores, method="average")  # average ranks = ties worth 1/2
    u_statistic = ranks[positives].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))


def average_precision(scores, positives) -> float:
    """AUPRC as sum_k (R_k - R_{k-1}) P_k over distinct score thresholds (like sklearn)."""
    scores = _as_finite_1d("scores", scores)
    positives = _as_labels("positives", positives)
    _same_length(scores=scores, positives=positives)
    n_pos = int(positives.sum())
    if n_pos == 0 or n_pos == positives.size:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_positives = scores[order], positives[order]
    # one threshold per distinct score: tied structures enter together
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_positives)[last_of_group]
    precision = true_pos / (last_of_group + 1)
    recall = true_pos / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# ----------------------------------------------------------------------------- selective prediction


def risk_coverage(confidence, is_error) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk when accepting the k most confident structures, k = 1..n.

    Structures with tied confidence cannot be ordered, so inside a tie group the risk is
    its expectation over random orderings (the group's error rate fills in linearly): the
    curve is deterministic and does not depend on input order.
    """
    confidence = _as_finite_1d("confidence", confidence)
    is_error = _as_labels("is_error", is_error)
    _same_length(confidence=confidence, is_error=is_error)
    n = confidence.size
    order = np.argsort(-confidence, kind="mergesort")
    sorted_confidence = confidence[order]
    sorted_errors = is_error[order].astype(np.float64)

    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_confidence)) + 1]
    group_size = np.diff(np.r_[group_start, n])
    group_errors = np.add.reduceat(sorted_errors, group_start)
    errors_before_group = np.cumsum(group_errors) - group_errors
    group_of = np.repeat(np.arange(group_start.size), group_size)

    accepted = np.arange(1, n + 1)
    taken_from_group = accepted - group_start[group_of]
    expected_errors = errors_before_group[group_of] + taken_from_group * (
        group_errors[group_of] / group_size[group_of]
    )
    return accepted / n, expected_errors / accepted


def aurc(confidence, is_error) -> float:
    """Area under the risk–coverage curve: mean selective risk over coverages k/n."""
    _, risk = risk_coverage(confidence, is_error)
    return float(risk.mean())


def selective_risk(confidence, is_error, coverage: float) -> float:
    """Unreliable fraction among the ceil(coverage * n) most confident structures."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    coverages, risk = risk_coverage(confidence, is_error)
    # first k with k/n >= coverage; the tolerance keeps 0.8 * 10 from becoming 9
    index = int(np.searchsorted(coverages, coverage - 1e-12, side="left"))
    return float(risk[min(index, risk.size - 1)])


# ----------------------------------------------------------------------------- calibration


def reliability_diagram(p_reliable, is_reliable, n_bins: int = 15) -> ReliabilityDiagram:
    """Mean predicted probability and observed reliable fraction in equal-width bins of [0, 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p_reliable = _as_probability("p_reliable", p_reliable)
    is_reliable = _as_labels("is_reliable", is_reliable)
    _same_length(p_reliable=p_reliable, is_reliable=is_reliable)
    bin_index = np.minimum((p_reliable * n_bins).astype(np.int64), n_bins - 1)  # p = 1 -> last bin
    counts = np.bincount(bin_index, minlength=n_bins)
    sum_p = np.bincount(bin_index, weights=p_reliable, minlength=n_bins)
    sum_reliable = np.bincount(bin_index, weights=is_reliable.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, sum_p / counts, np.nan)
        accuracy = np.where(counts > 0, sum_reliable / counts, np.nan)
    bin_centers = (np.arange(n_bins) + 0.5) / n_bins
    return ReliabilityDiagram(bin_centers, confidence, accuracy, counts)


def expected_calibration_error(p_reliable, is_reliable, n_bins: int = 15) -> float:
    """ECE: count-weighted mean of |accuracy - confidence| over equal-width bins."""
    diagram = reliability_diagram(p_reliable, is_reliable, n_bins)
    filled = diagram.counts > 0
    gaps = np.abs(diagram.accuracy[filled] - diagram.confidence[filled])
    return float(np.sum(diagram.counts[filled] * gaps) / diagram.counts.sum())


# ----------------------------------------------------------------------------- error correlation


def spearman(a, b) -> float:
    """Spearman rank correlation; nan when either input is constant or has one element."""
    a = _as_finite_1d("a", a)
    b = _as_finite_1d("b", b)
    _same_length(a=a, b=b)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def binned_error_by_probability(p_reliable, error, n_bins: int = 5) -> BinnedError:
    """Mean error in quantile bins of p_reliable, and whether it falls as p rises.

    Bin edges are quantiles of p, so tied probabilities always share a bin; heavy ties
    can therefore leave fewer than n_bins non-empty bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p_reliable = _as_probability("p_reliable", p_reliable)
    error = _as_finite_1d("error", error)
    _same_length(p_reliable=p_reliable, error=error)
    inner_edges = np.quantile(p_reliable, np.linspace(0, 1, n_bins + 1)[1:-1])
    bin_index = np.searchsorted(inner_edges, p_reliable, side="right")
    counts = np.bincount(bin_index, minlength=n_bins)
    filled = counts > 0
    p_mean = np.bincount(bin_index, weights=p_reliable, minlength=n_bins)[filled] / counts[filled]
    error_mean = np.bincount(bin_index, weights=error, minlength=n_bins)[filled] / counts[filled]
    is_monotone = bool(np.all(np.diff(error_mean) <= 0))
    return BinnedError(p_mean, error_mean, counts[filled], is_monotone)


# ----------------------------------------------------------------------------- summary


def summarize_scores(name: str, unreliability_score, is_reliable, error) -> dict:
    """One table row: ranking, selective-risk and error-correlation metrics of a score."""
    score = _as_finite_1d("unreliability_score", unreliability_score)
    is_reliable = _as_labels("is_reliable", is_reliable)
    error = _as_finite_1d("error", error)
    _same_length(unreliability_score=score, is_reliable=is_reliable, error=error)
    is_unreliable = ~is_reliable
    confidence = -score
    return {
        NAME: name,
        AUROC: auroc(score, is_unreliable),
        AUPRC: average_precision(score, is_unreliable),
        AURC: aurc(confidence, is_unreliable),
        SELECTIVE_RISK_80: selective_risk(confidence, is_unreliable, 0.8),
        SELECTIVE_RISK_90: selective_risk(confidence, is_unreliable, 0.9),
        SPEARMAN_ERROR: spearman(score, error),
    }
