"""`probe-md calibrate`: refit a head's calibration on labelled frames of the user's own regime.

A head calibrated on its training distribution can be over-confident elsewhere (e.g. at the
onset of unreliability). Given frames labelled with the reference (the retraining loop's
`label` output), this refits the map from the head's base logit, (raw + bias) / temperature,
to the probability: temperature + bias, or isotonic when there are enough frames, whichever
has the lower held-out NLL, and re-widens the predicted-error interval to 80 % on them. The
classifier and its ranking are untouched. ECE and interval coverage are reported out of
fold: each frame scored by a calibration fitted without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import expit

from probe_md.calibration import (
    CALIBRATION_FOLDS,
    CalibrationChoice,
    LogitMap,
    check_enough_frames,
    choose_logit_map,
)
from probe_md.error_prediction import (
    PooledStructures,
    conformal_offset,
    error_floor,
    interval_coverage,
    log_errors,
    pooled_vectors,
    widened_log_bounds,
    width_scale,
)
from probe_md.evaluation import load_matching_head
from probe_md.features import head_inputs, predict_dataset
from probe_md.head import ProbeHead
from probe_md.io_utils import check_output_path
from probe_md.metrics import expected_calibration_error
from probe_md.reliability_labels import class_balance, label_reliable, structure_errors
from probe_md.structures import ReferenceKeys, read_structures
from probe_md.training import save_head


@dataclass
class CalibrateRequest:
    """Inputs of `probe-md calibrate`."""

    head_path: Path
    data_paths: Sequence[Path]
    output_path: Path
    model_path: Path
    keys: ReferenceKeys = ReferenceKeys()
    cache_dir: Path | None = None
    folds: int = CALIBRATION_FOLDS


def base_logits(head: ProbeHead, pooled: PooledStructures) -> np.ndarray:
    """(raw + bias) / temperature: the logit before any isotonic knots."""
    with torch.no_grad():
        raw = head.readout_logit(pooled.vectors, pooled.atom_counts, calibrated=False)
        return ((raw + head.logit_bias) / head.temperature).double().numpy()


def apply_logit_map(head: ProbeHead, fitted: LogitMap) -> None:
    """Make `fitted` the head's calibration: temperature maps fold into temperature and bias
    (knots cleared); isotonic maps become the knots on the base logit."""
    dtype = head.temperature.dtype
    if fitted.kind == "temperature":
        temperature = float(head.temperature)
        head.logit_bias.fill_(float(head.logit_bias) + fitted.bias * temperature)
        head.temperature.fill_(temperature * fitted.temperature)
        head.calibration_knots_x = torch.zeros(0, dtype=dtype)
        head.calibration_knots_y = torch.zeros(0, dtype=dtype)
    else:
        head.calibration_knots_x = torch.tensor(fitted.knots_x, dtype=dtype)
        head.calibration_knots_y = torch.tensor(fitted.knots_y, dtype=dtype)


def out_of_fold_coverage(log_bounds: np.ndarray, target: np.ndarray, scale: np.ndarray, folds: int) -> float:
    """Coverage of the interval with the conformal offset fitted on the other folds (in the
    floored log space of `target`: the same as the error's coverage, see ProbeHead.readout_error)."""
    fold_of = np.arange(len(target)) % folds
    covered = np.empty(len(target), dtype=bool)
    for fold in range(folds):
        held_out = fold_of == fold
        offset = conformal_offset(log_bounds[~held_out], target[~held_out], width_scale=scale[~held_out])
        bounds = widened_log_bounds(log_bounds[held_out], offset, scale[held_out])
        covered[held_out] = (target[held_out] >= bounds[:, 0]) & (target[held_out] <= bounds[:, 2])
    return float(covered.mean())


def recalibrate_error_interval(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray, folds: int,
                               threshold: float | None = None) -> dict:
    """Refit the conformal offset of the predicted-error interval on these frames."""
    if float(head.error_fitted) < 0.5:
        return {"predicted_error": "not in this head (trained without errors)"}
    with torch.no_grad():
        before = head.readout_error(*pooled).double().numpy()
        raw = head.readout_log_error(*pooled, widened=False).double().numpy()
    target = log_errors(errors, threshold).double().numpy()
    scale = width_scale(head, pooled.atom_counts)
    report = {
        "interval_coverage_before": interval_coverage(before, errors),
        "interval_coverage_after_out_of_fold": out_of_fold_coverage(raw, target, scale, folds),
    }
    head.error_interval_offset.fill_(conformal_offset(raw, target, width_scale=scale))
    head.error_log_floor.fill_(math.log(error_floor(threshold)))
    return report


def calibration_report(choice: CalibrationChoice, p_before: np.ndarray, is_reliable: np.ndarray) -> dict:
    return {
        "chosen": choice.chosen.kind,
        "held_out_nll": choice.held_out_nll,
        "ece_before": expected_calibration_error(p_before, is_reliable),
        "ece_after_out_of_fold": expected_calibration_error(expit(choice.out_of_fold_logits), is_reliable),
    }


def calibrate(request: CalibrateRequest) -> dict:
    """Refit the calibration of `head_path` on `data_paths`, write `output_path`; returns the report."""
    check_output_path(request.output_path, "head file")
    head, info, backbone = load_matching_head(request.head_path, request.model_path)
    structures = [a for path in request.data_paths for a in read_structures(path, request.keys)]
    check_enough_frames(len(structures))
    predictions = predict_dataset(backbone, structures, request.cache_dir, "features")
    errors = structure_errors(predictions, structures, info.criterion, request.keys)
    is_reliable = label_reliable(errors, info.threshold)
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    with torch.no_grad():
        p_before = expit(head.readout_logit(pooled.vectors, pooled.atom_counts).double().numpy())
    choice = choose_logit_map(base_logits(head, pooled), is_reliable, request.folds)
    report = {
        "data": [str(p) for p in request.data_paths],
        "n_frames": len(structures),
        "balance": str(class_balance(is_reliable)),
        **calibration_report(choice, p_before, is_reliable),
        **recalibrate_error_interval(head, pooled, errors, request.folds, info.threshold),
    }
    apply_logit_map(head, choice.chosen)
    info.metrics = {**info.metrics, "recalibration": report}
    save_head(head, info, request.output_path)
    return report


def format_calibration_report(report: dict) -> str:
    lines = [
        f"{report['n_frames']} frames ({report['balance']}): {report['chosen']} chosen "
        f"(held-out NLL {', '.join(f'{k} {v:.3f}' for k, v in report['held_out_nll'].items())})",
        f"ECE {report['ece_before']:.3f} -> {report['ece_after_out_of_fold']:.3f} "
        "(after: out of fold, each frame scored by a calibration fitted without it)",
    ]
    if "interval_coverage_before" in report:
        lines.append(
            f"80 % error interval coverage {report['interval_coverage_before']:.2f} -> "
            f"{report['interval_coverage_after_out_of_fold']:.2f} (out of fold)"
        )
    return "\n".join(lines)
