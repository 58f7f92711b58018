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
from typing import Sequence

import numpy as np
import torch

from probe_md.head import ERROR_QUANTILES, ProbeHead

ERROR_FLOOR = 1e-12  # a zero error (identical forces) would have log = -inf
INTERVAL_COVERAGE = ERROR_QUANTILES[2] - ERROR_QUANTILES[0]  # 0.8


def pooled_vectors(head: ProbeHead, features: Sequence[np.ndarray], batch_structures: int = 256) -> torch.Tensor:
    """The head's pooled vector [G, H*D] of every structure (no gradients)."""
    from probe_md.training import pack

    dtype = head.feature_mean.dtype
    chunks = []
    with torch.no_grad():
        for begin in range(0, len(features), batch_structures):
            packed = pack(features[begin : begin + batch_structures], dtype=dtype)
            chunks.append(head(packed.features, packed.batch, packed.num_graphs).pooled)
    return torch.cat(chunks)


def log_errors(errors: np.ndarray) -> torch.Tensor:
    return torch.log(torch.as_tensor(np.maximum(np.asarray(errors, float), ERROR_FLOOR), dtype=torch.float32))


def pinball_loss(log_bounds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss of [G, 3] predictions at ERROR_QUANTILES."""
    levels = torch.tensor(ERROR_QUANTILES, dtype=log_bounds.dtype)
    residual = target.unsqueeze(1) - log_bounds
    return torch.mean(torch.maximum(levels * residual, (levels - 1) * residual))


def conformal_offset(log_bounds: np.ndarray, target: np.ndarray, coverage: float = INTERVAL_COVERAGE) -> float:
    """Split-conformal widening (log space) so [lower - c, upper + c] covers `coverage` of new
    structures exchangeable with these (conformalized quantile regression)."""
    scores = np.maximum(log_bounds[:, 0] - target, target - log_bounds[:, 2])
    level = min(1.0, math.ceil((len(scores) + 1) * coverage) / len(scores))
    return float(np.quantile(scores, level, method="higher"))


def interval_coverage(bounds: np.ndarray, errors: np.ndarray) -> float:
    """Fraction of structures whose error lies inside [lower, upper]."""
    errors = np.asarray(errors, float)
    return float(np.mean((errors >= bounds[:, 0]) & (errors <= bounds[:, 2])))


def calibrate_error_interval(head: ProbeHead, pooled: torch.Tensor, errors: np.ndarray) -> dict:
    """Set the conformal offset on held-out structures (the calibration split) and mark the
    readout as trained; returns a summary."""
    target = log_errors(errors).double().numpy()
    with torch.no_grad():
        raw_bounds = head.readout_log_error(pooled, widened=False).double().numpy()
    offset = conformal_offset(raw_bounds, target)
    head.error_interval_offset.fill_(offset)
    head.error_fitted.fill_(1.0)
    return {"error_interval_offset": offset,
            "error_interval_coverage_before_offset": interval_coverage(np.exp(raw_bounds), np.asarray(errors))}


def predicted_errors(head: ProbeHead, pooled: torch.Tensor) -> np.ndarray:
    """[G, 3] (lower, median, upper) in the criterion's units; NaN for a head without them."""
    with torch.no_grad():
        return head.readout_error(pooled.to(head.feature_mean.dtype)).double().numpy()
