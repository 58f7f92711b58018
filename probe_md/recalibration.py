"""`probe-md calibrate`: refit a head's calibration on labelled frames of the user's own regime.

A head calibrated on its training distribution can be over-confident elsewhere (e.g. at the
onset of unreliability). Given frames labelled with the reference (the retraining loop's
`label` output), this refits how the head turns what it reads into a probability. A head
whose probability comes from its predicted error (every head trained with errors) gets that
error's median and spread refitted on the frames' errors (probe_md.error_recalibration); the
median moves, so the reported error and its interval move with it. Other heads get the map of
their base logit, (raw + bias) / temperature, refitted: temperature + bias, or isotonic when
there are enough frames, whichever has the lower cross-validated NLL (reported for every
candidate either way). The predicted-error interval is re-widened to 80 % on the frames. ECE
and interval coverage are reported out of fold: each frame scored by a calibration fitted
without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
from probe_md.error_recalibration import KIND as ERROR_KIND
from probe_md.error_recalibration import (
    ErrorShift,
    apply_error_shift,
    error_shift_fitter,
    error_terms,
    fit_error_shift,
    reads_its_error,
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


def out_of_fold_coverage(log_bounds: np.ndarray, target: np.ndarray, scale: np.ndarray, folds: int,
                         median_shift: Callable[[np.ndarray], float] | None = None) -> float:
    """Coverage of the interval with the conformal offset (and the median's shift, when it is
    recalibrated too) fitted on the other folds (in the floored log space of `target`: the same
    as the error's coverage, see ProbeHead.readout_error)."""
    fold_of = np.arange(len(target)) % folds
    covered = np.empty(len(target), dtype=bool)
    for fold in range(folds):
        held_out = fold_of == fold
        shifted = log_bounds + (median_shift(np.flatnonzero(~held_out)) if median_shift else 0.0)
        offset = conformal_offset(shifted[~held_out], target[~held_out], width_scale=scale[~held_out])
        bounds = widened_log_bounds(shifted[held_out], offset, scale[held_out])
        covered[held_out] = (target[held_out] >= bounds[:, 0]) & (target[held_out] <= bounds[:, 2])
    return float(covered.mean())


def recalibrate_error_interval(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray, folds: int,
                               threshold: float | None = None,
                               median_shift: Callable[[np.ndarray], float] | None = None) -> dict:
    """Refit the conformal offset of the predicted-error interval on these frames, around the
    median as `median_shift` (rows -> shift; applied to the head by the caller) will move it."""
    if float(head.error_fitted) < 0.5:
        return {"predicted_error": "not in this head (trained without errors)"}
    with torch.no_grad():
        before = head.readout_error(*pooled).double().numpy()
        raw = head.readout_log_error(*pooled, widened=False).double().numpy()
    target = log_errors(errors, threshold).double().numpy()
    scale = width_scale(head, pooled.atom_counts)
    report = {
        "interval_coverage_before": interval_coverage(before, errors),
        "interval_coverage_after_out_of_fold": out_of_fold_coverage(raw, target, scale, folds, median_shift),
    }
    shifted = raw + (median_shift(np.arange(len(target))) if median_shift else 0.0)
    head.error_interval_offset.fill_(conformal_offset(shifted, target, width_scale=scale))
    head.error_log_floor.fill_(math.log(error_floor(threshold)))
    return report


def calibration_report(choice: CalibrationChoice, p_before: np.ndarray, is_reliable: np.ndarray) -> dict:
    return {
        "chosen": choice.kind,
        "held_out_nll": choice.held_out_nll,
        "ece_before": expected_calibration_error(p_before, is_reliable),
        "ece_after_out_of_fold": expected_calibration_error(expit(choice.out_of_fold_logits), is_reliable),
    }


@dataclass(frozen=True)
class Recalibration:
    """What `calibrate` refits: the chosen map, and the median's shift when the error's map won."""

    choice: CalibrationChoice
    shift: ErrorShift | None
    median_shift: Callable[[np.ndarray], float] | None  # rows -> the shift refitted on them


def choose_recalibration(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray, is_reliable: np.ndarray,
                         threshold: float, folds: int) -> Recalibration:
    terms = error_terms(head, pooled, errors, threshold) if reads_its_error(head) else None
    if terms is None:
        return Recalibration(choose_logit_map(base_logits(head, pooled), is_reliable, folds), None, None)
    # A head that reads its predicted error is recalibrated through it, whatever the NLL cross-
    # validated on these frames says: on frames of other trajectories that map had the lowest
    # NLL in 55 of 78 draws of ~100 frames and the lowest ECE, while the cross-validated choice
    # took it in 28 (benchmarks/quality/calibrate_split.py, the hot Cu regimes).
    choice = choose_logit_map(base_logits(head, pooled), is_reliable, folds,
                              {ERROR_KIND: error_shift_fitter(terms)}, preferred=ERROR_KIND)
    return Recalibration(choice, fit_error_shift(terms, np.arange(len(errors))),
                         lambda rows: fit_error_shift(terms, rows).shift)


def refit_calibration(head: ProbeHead, pooled: PooledStructures, errors: np.ndarray, threshold: float,
                      folds: int = CALIBRATION_FOLDS) -> dict:
    """Refit `head`'s calibration and interval on these structures (in place); the report."""
    is_reliable = label_reliable(errors, threshold)
    with torch.no_grad():
        p_before = expit(head.readout_logit(pooled.vectors, pooled.atom_counts).double().numpy())
    fit = choose_recalibration(head, pooled, errors, is_reliable, threshold, folds)
    report = {
        "balance": str(class_balance(is_reliable)),
        **calibration_report(fit.choice, p_before, is_reliable),
        **({"error_shift": {"log_shift": fit.shift.shift, "spread_scale": fit.shift.scale}} if fit.shift else {}),
        **recalibrate_error_interval(head, pooled, errors, folds, threshold, fit.median_shift),
    }
    if fit.shift is not None:
        apply_error_shift(head, fit.shift)
    else:
        apply_logit_map(head, fit.choice.chosen)
    return report


def calibrate(request: CalibrateRequest) -> dict:
    """Refit the calibration of `head_path` on `data_paths`, write `output_path`; returns the report."""
    check_output_path(request.output_path, "head file")
    head, info, backbone = load_matching_head(request.head_path, request.model_path)
    structures = [a for path in request.data_paths for a in read_structures(path, request.keys)]
    check_enough_frames(len(structures))
    predictions = predict_dataset(backbone, structures, request.cache_dir, "features")
    errors = structure_errors(predictions, structures, info.criterion, request.keys)
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    report = {"data": [str(p) for p in request.data_paths], "n_frames": len(structures),
              **refit_calibration(head, pooled, errors, info.threshold, request.folds)}
    info.metrics = {**info.metrics, "recalibration": report}
    save_head(head, info, request.output_path)
    return report


def format_calibration_report(report: dict) -> str:
    lines = [
        f"{report['n_frames']} frames ({report['balance']}): {report['chosen']} map "
        f"(cross-validated NLL {', '.join(f'{k} {v:.3f}' for k, v in report['held_out_nll'].items())})",
        f"ECE {report['ece_before']:.3f} -> {report['ece_after_out_of_fold']:.3f} "
        "(after: out of fold, each frame scored by a calibration fitted without it)",
    ]
    if "error_shift" in report:
        shift = report["error_shift"]
        lines.append(f"predicted error: median x {math.exp(shift['log_shift']):.3f}, spread x {shift['spread_scale']:.3f}")
    if "interval_coverage_before" in report:
        lines.append(
            f"80 % error interval coverage {report['interval_coverage_before']:.2f} -> "
            f"{report['interval_coverage_after_out_of_fold']:.2f} (out of fold)"
        )
    return "\n".join(lines)
