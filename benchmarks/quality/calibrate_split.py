"""`calibrate`'s map on ~100 frames of the onset regime, scored on the rest of that regime.

The head shipped before issue #11 (benchmarks/quality/data/cu_head_before_onset.pt) is
over-confident on the onset benchmark. For each seed, whole trajectories of the benchmark are
drawn until ~100 frames are reached; the calibration (temperature + bias, isotonic, and the one
`probe-md calibrate` chooses by cross-validated NLL) is fitted on them and the ECE measured on
the other trajectories' frames. The "floor" is the median ECE those frames would show if the
calibrated probabilities were exactly right (labels drawn from them): the noise of ECE itself.

The same draws then refit the embedded head's predicted-error interval (its conformal offset,
as `calibrate` does): 80 % interval coverage of the other trajectories' frames, before and after.

Usage: python benchmarks/quality/calibrate_split.py [--seeds 20] [--frames 100] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
from scipy.special import expit

from probe_md import defaults, metrics
from probe_md.calibration import choose_logit_map, fit_logit_map
from probe_md.cache import feature_cache_dir
from probe_md.error_prediction import PooledStructures, interval_coverage, pooled_vectors, predicted_errors
from probe_md.evaluation import load_matching_head, write_json
from probe_md.features import head_inputs, predict_dataset
from probe_md.recalibration import base_logits, recalibrate_error_interval
from probe_md.reliability_labels import label_reliable, structure_errors
from probe_md.structures import read_structures

DATA = Path(__file__).resolve().parent / "data"


def trajectory_split(trajectories: np.ndarray, frames: int, seed: int) -> np.ndarray:
    """Mask of whole trajectories, drawn at random, holding at most `frames` frames."""
    chosen, count = [], 0
    for trajectory in np.random.default_rng(seed).permutation(np.unique(trajectories)):
        size = int((trajectories == trajectory).sum())
        if count + size > frames:
            break
        chosen.append(trajectory)
        count += size
    return np.isin(trajectories, chosen)


def ece_floor(p: np.ndarray, draws: int = 100) -> float:
    return float(np.median([metrics.expected_calibration_error(p, np.random.default_rng(i).random(len(p)) < p)
                            for i in range(draws)]))


def interval_rows(structures: list, predictions: list, trajectories: np.ndarray, frames: int, seeds: int) -> list[dict]:
    """Per draw: the embedded head's interval coverage of the held-out frames, before and after
    its conformal offset is refitted on the drawn frames."""
    head, info, _ = load_matching_head(defaults.default_head_path(), defaults.default_model_path())
    errors = structure_errors(predictions, structures, info.criterion)
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    before = predicted_errors(head, pooled)
    rows = []
    for seed in range(seeds):
        fit = trajectory_split(trajectories, frames, seed)
        refitted = copy.deepcopy(head)
        recalibrate_error_interval(refitted, PooledStructures(pooled.vectors[fit], pooled.atom_counts[fit]),
                                   errors[fit], folds=5, threshold=info.threshold)
        after = predicted_errors(refitted, pooled)
        rows.append({"seed": seed, "coverage_before": interval_coverage(before[~fit], errors[~fit]),
                     "coverage_after": interval_coverage(after[~fit], errors[~fit]),
                     "offset": float(refitted.error_interval_offset)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    head, info, backbone = load_matching_head(DATA / "cu_head_before_onset.pt", defaults.default_model_path())
    structures = read_structures(DATA / "onset_test.extxyz.gz")
    predictions = predict_dataset(backbone, structures, feature_cache_dir(), "features")
    is_reliable = label_reliable(structure_errors(predictions, structures, info.criterion), info.threshold)
    logits = base_logits(head, pooled_vectors(head, head_inputs(predictions, head.reads_force_norm)))
    trajectories = np.array([a.info["trajectory_id"] for a in structures])
    rows = []
    for seed in range(args.seeds):
        fit = trajectory_split(trajectories, args.frames, seed)
        held_out = ~fit
        chosen = choose_logit_map(logits[fit], is_reliable[fit]).chosen
        row = {"seed": seed, "fit_frames": int(fit.sum()), "held_out_frames": int(held_out.sum()),
               "ece_before": metrics.expected_calibration_error(expit(logits[held_out]), is_reliable[held_out]),
               "chosen": chosen.kind}
        for kind in ("temperature", "isotonic"):
            fitted = fit_logit_map(kind, logits[fit], is_reliable[fit])
            row[f"ece_{kind}"] = metrics.expected_calibration_error(expit(fitted.apply(logits[held_out])), is_reliable[held_out])
        p_after = expit(chosen.apply(logits[held_out]))
        row["ece_chosen"] = metrics.expected_calibration_error(p_after, is_reliable[held_out])
        row["ece_floor"] = ece_floor(p_after)
        rows.append(row)
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    summary = {key: float(np.median([r[key] for r in rows]))
               for key in ("ece_before", "ece_temperature", "ece_isotonic", "ece_chosen", "ece_floor")}
    print("median over seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    intervals = interval_rows(structures, predictions, trajectories, args.frames, args.seeds)
    after = [r["coverage_after"] for r in intervals]
    summary["interval_coverage_before"] = float(np.median([r["coverage_before"] for r in intervals]))
    summary["interval_coverage_after"] = float(np.median(after))
    print(f"embedded head's 80 % interval on the held-out frames: coverage {summary['interval_coverage_before']:.3f} -> "
          f"{summary['interval_coverage_after']:.3f} (median; {min(after):.3f}-{max(after):.3f}, "
          f"{sum(0.75 <= c <= 0.85 for c in after)} of {len(after)} draws in 0.75-0.85)")
    write_json({"rows": rows, "interval_rows": intervals, "median": summary}, args.out / "calibrate_split.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
