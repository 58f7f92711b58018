"""`calibrate`'s map on ~100 frames of the onset regime, scored on the rest of that regime.

The head shipped before issue #11 (benchmarks/quality/data/cu_head_before_onset.pt) is
over-confident on the onset benchmark. For each seed, whole trajectories of the benchmark are
drawn until ~100 frames are reached; the calibration (temperature + bias, isotonic, and the one
`probe-md calibrate` chooses by cross-validated NLL) is fitted on them and the ECE measured on
the other trajectories' frames. The "floor" is the median ECE those frames would show if the
calibrated probabilities were exactly right (labels drawn from them): the noise of ECE itself.

The same draws then refit the embedded head's predicted-error interval (its conformal offset,
as `calibrate` does): 80 % interval coverage of the other trajectories' frames, before and after.

Each draw also records every map's NLL on the held-out frames, so the summary says how often
the choice (cross-validated NLL on the drawn frames) picked the map that held-out NLL prefers.
`--data`/`--head` run the same on another regime (any labelled frames with
info['trajectory_id']), e.g. the onset pool (examples/default_cu/make_onset_data.py), which the
head shipped before #11 never saw.

Usage: python benchmarks/quality/calibrate_split.py [--seeds 20] [--frames 100] [--data F... --head H --tag T]
       [--out benchmarks/results]
The other two regimes of the results folder:
  --data examples/default_cu/work/onset_pool.extxyz --tag onset_pool
  --data benchmarks/quality/data/large_test.extxyz.gz benchmarks/quality/data/large_test_b.extxyz.gz --frames 45 --tag large_cells
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
from scipy.special import expit

from probe_md import defaults, metrics
from probe_md.calibration import binary_nll, choose_logit_map, fit_logit_map
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


def map_row(seed: int, logits: np.ndarray, is_reliable: np.ndarray, fit: np.ndarray) -> dict:
    """One draw: each map fitted on the drawn frames, ECE and NLL on the others."""
    held_out = ~fit
    chosen = choose_logit_map(logits[fit], is_reliable[fit]).chosen
    row = {"seed": seed, "fit_frames": int(fit.sum()), "held_out_frames": int(held_out.sum()),
           "ece_before": metrics.expected_calibration_error(expit(logits[held_out]), is_reliable[held_out]),
           "chosen": chosen.kind}
    for kind, fitted in (("temperature", fit_logit_map("temperature", logits[fit], is_reliable[fit])),
                         ("isotonic", fit_logit_map("isotonic", logits[fit], is_reliable[fit])), ("chosen", chosen)):
        mapped = fitted.apply(logits[held_out])
        row[f"ece_{kind}"] = metrics.expected_calibration_error(expit(mapped), is_reliable[held_out])
        row[f"held_out_nll_{kind}"] = binary_nll(mapped, is_reliable[held_out])
    row["ece_floor"] = ece_floor(expit(chosen.apply(logits[held_out])))
    return row


def summarize(rows: list[dict]) -> dict:
    """Medians over draws, and how often the choice (by cross-validated NLL on the drawn frames)
    picked the map with the lower NLL on the held-out frames."""
    summary = {key: float(np.median([r[key] for r in rows]))
               for key in ("ece_before", "ece_temperature", "ece_isotonic", "ece_chosen", "ece_floor")}
    better = ["isotonic" if r["held_out_nll_isotonic"] < r["held_out_nll_temperature"] else "temperature" for r in rows]
    summary["draws_isotonic_lower_held_out_nll"] = better.count("isotonic")
    summary["draws_choice_matches_held_out_nll"] = sum(b == r["chosen"] for b, r in zip(better, rows))
    summary["draws"] = len(rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA / "onset_test.extxyz.gz"],
                        help="labelled frames with info['trajectory_id'] (default: the onset benchmark)")
    parser.add_argument("--head", type=Path, default=DATA / "cu_head_before_onset.pt", help="the head to recalibrate")
    parser.add_argument("--tag", default=None, help="results go to calibrate_split_<tag>.json (default: calibrate_split.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    head, info, backbone = load_matching_head(args.head, defaults.default_model_path())
    structures = [atoms for path in args.data for atoms in read_structures(path)]
    trajectories = np.array([a.info["trajectory_id"] for a in structures])
    predictions = predict_dataset(backbone, structures, feature_cache_dir(), "features")
    is_reliable = label_reliable(structure_errors(predictions, structures, info.criterion), info.threshold)
    logits = base_logits(head, pooled_vectors(head, head_inputs(predictions, head.reads_force_norm)))
    rows = []
    for seed in range(args.seeds):
        fit = trajectory_split(trajectories, args.frames, seed)
        if min(is_reliable[fit].sum(), (~is_reliable[fit]).sum()) < 2:
            print(f"seed {seed}: the drawn frames hold fewer than 2 of a class, skipped")
            continue
        rows.append(map_row(seed, logits, is_reliable, fit))
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    summary = summarize(rows)
    print("median over draws: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    intervals = interval_rows(structures, predictions, trajectories, args.frames, args.seeds)
    after = [r["coverage_after"] for r in intervals]
    summary["interval_coverage_before"] = float(np.median([r["coverage_before"] for r in intervals]))
    summary["interval_coverage_after"] = float(np.median(after))
    print(f"embedded head's 80 % interval on the held-out frames: coverage {summary['interval_coverage_before']:.3f} -> "
          f"{summary['interval_coverage_after']:.3f} (median; {min(after):.3f}-{max(after):.3f}, "
          f"{sum(0.75 <= c <= 0.85 for c in after)} of {len(after)} draws in 0.75-0.85)")
    name = "calibrate_split.json" if args.tag is None else f"calibrate_split_{args.tag}.json"
    write_json({"data": [str(path) for path in args.data], "head": str(args.head), "frames": args.frames, "rows": rows,
                "interval_rows": intervals, "median": summary}, args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
