"""Predicted error: quantile regression of log(error) on the head's pooled vector.

The classifier answers "below the threshold?"; this readout answers "how large?", so a user
reads "p = 0.3, force RMSE ≈ 35 (28-44) meV/Å" and can judge another threshold without
retraining. It reads the same pooled vector as the classifier and is trained with it (the
pinball loss of the 10/50/90 % quantiles of log(error) joins the classifier's loss: the pooled
vector must then describe how wrong the MLIP is, not only on which side of the threshold).
The interval is then widened by a split-conformal offset fitted on the calibration split, so
that it covers 80 % of new structures like those.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from probe_md.head import ERROR_QUANTILES, ProbeHead

ERROR_FLOOR = 1e-12  # a zero error (identical forces) would have log = -inf
# With a threshold, errors below this fraction of it count as equally small: some structures'
# errors vanish by symmetry (Si cells whose reference and MLIP forces are both zero), and their
# logs would stretch the quantile readout over tens of e-folds (the interval, then the logit).
ERROR_FLOOR_FRACTION = 1e-2
INTERVAL_COVERAGE = ERROR_QUANTILES[2] - ERROR_QUANTILES[0]  # 0.8


class PooledStructures(NamedTuple):
    """What the head's readouts read, per structure."""

    vectors: torch.Tensor  # [G, H*D] pooled vectors
    atom_counts: torch.Tensor  # [G] atoms per structure


def pooled_vectors(head: ProbeHead, features: Sequence[np.ndarray], batch_structures: int = 256) -> PooledStructures:
    """The head's pooled vector [G, H*D] and atom count of every structure (no gradients)."""
    from probe_md.training import pack

    dtype = head.feature_mean.dtype
    vectors, counts = [], []
    with torch.no_grad():
        for begin in range(0, len(features), batch_structures):
            packed = pack(features[begin : begin + batch_structures], dtype=dtype)
            out = head(packed.features, packed.batch, packed.num_graphs)
            vectors.append(out.pooled)
            counts.append(out.atom_counts)
    return PooledStructures(torch.cat(vectors), torch.cat(counts))


def error_floor(threshold: float | None = None) -> float:
    """Errors below this count as equally small: ERROR_FLOOR_FRACTION x the threshold (or
    ERROR_FLOOR without one)."""
    return ERROR_FLOOR if threshold is None else max(ERROR_FLOOR, ERROR_FLOOR_FRACTION * threshold)


def log_errors(errors: np.ndarray, threshold: float | None = None) -> torch.Tensor:
    """log(max(error, error_floor(threshold))): what the quantile readout is trained on."""
    return torch.log(torch.as_tensor(np.maximum(np.asarray(errors, float), error_floor(threshold)), dtype=torch.float32))


def pinball_loss(log_bounds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss of [G, 3] predictions at ERROR_QUANTILES."""
    levels = torch.tensor(ERROR_QUANTILES, dtype=log_bounds.dtype)
    residual = target.unsqueeze(1) - log_bounds
    return torch.mean(torch.maximum(levels * residual, (levels - 1) * residual))


def conformal_offset(log_bounds: np.ndarray, target: np.ndarray, coverage: float = INTERVAL_COVERAGE,
                     width_scale: np.ndarray | None = None) -> float:
    """Split-conformal widening so [lower - c*s, upper + c*s] (log space, s the per-structure
    width scale) covers `coverage` of new structures exchangeable with these (conformalized
    quantile regression)."""
    scale = np.ones(len(target)) if width_scale is None else np.asarray(width_scale, float)
    scores = np.maximum(log_bounds[:, 0] - target, target - log_bounds[:, 2]) / scale
    level = min(1.0, math.ceil((len(scores) + 1) * coverage) / len(scores))
    return float(np.quantile(scores, level, method="higher"))


def widened_log_bounds(raw_log_bounds: np.ndarray, offset: float, scale: np.ndarray) -> np.ndarray:
    """[G, 3] log bounds widened by the conformal offset as ProbeHead.readout_log_error does:
    each half-width (already times the width scale) grows by offset x scale, and a negative
    offset narrows it to 0 at most (never past the median)."""
    median = raw_log_bounds[:, 1]
    scale = np.asarray(scale, float)
    lower = np.maximum(median - raw_log_bounds[:, 0] + offset * scale, 0.0)
    upper = np.maximum(raw_log_bounds[:, 2] - median + offset * scale, 0.0)
    return np.stack([median - lower, median, median + upper], axis=1)


def width_scale(head: ProbeHead, atom_counts: torch.Tensor) -> np.ndarray:
    """The per-structure factor on the interval's half-widths (see ProbeHead.width_scale)."""
    with torch.no_grad():
        return head.width_scale(atom_counts.to(head.feature_mean.dtype)).double().numpy()


def set_training_range(head: ProbeHead, errors: np.ndarray, atom_counts: np.ndarray,
                       threshold: float | None = None) -> None:
    """Record the largest error and cell the readout was trained on: the reported error and
    the interval's size law stop there (see ProbeHead.readout_error and width_scale)."""
    head.error_log_ceiling.fill_(float(log_errors(errors, threshold).max()))
    head.error_width_max_atoms.fill_(float(np.max(atom_counts)))


def interval_coverage(bounds: np.ndarray, errors: np.ndarray) -> float:
    """Fraction of structures whose error lies inside [lower, upper]."""
    errors = np.asarray(errors, float)
    return float(np.mean((errors >= bounds[:, 0]) & (errors <= bounds[:, 2])))


def calibrate_error_interval(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray,
                             threshold: float | None = None) -> dict:
    """Set the conformal offset on held-out structures (the calibration split) and mark the
    readout as trained; returns a summary."""
    target = log_errors(errors, threshold).double().numpy()
    with torch.no_grad():
        raw_bounds = head.readout_log_error(*pooled, widened=False).double().numpy()
    offset = conformal_offset(raw_bounds, target, width_scale=width_scale(head, pooled.atom_counts))
    head.error_interval_offset.fill_(offset)
    head.error_log_floor.fill_(math.log(error_floor(threshold)))
    head.error_fitted.fill_(1.0)
    return {"error_interval_offset": offset,
            "error_width_size_exponent": float(head.error_width_size_exponent.detach()),
            "error_interval_coverage_before_offset": interval_coverage(np.exp(raw_bounds), np.asarray(errors))}


def predicted_errors(head: ProbeHead, pooled: PooledStructures) -> np.ndarray:
    """[G, 3] (lower, median, upper) in the criterion's units; NaN for a head without them."""
    with torch.no_grad():
        return head.readout_error(pooled.vectors.to(head.feature_mean.dtype), pooled.atom_counts).double().numpy()
