"""`calibrate`'s map on ~100 frames of a regime, scored on the rest of that regime.

The head shipped before issue #11 (benchmarks/quality/data/cu_head_before_onset.pt) is
over-confident on the onset benchmark. For each seed, whole trajectories of the benchmark are
drawn until ~100 frames are reached; each calibration is fitted on them and the ECE measured
on the other trajectories' frames: temperature + bias, isotonic, for heads whose probability
comes from their predicted error that error's median and spread refitted on the frames' errors
(probe_md.error_recalibration), and what `probe-md calibrate` chooses among them by
cross-validated NLL. The "floor" is the median ECE those frames would show if the calibrated
probabilities were exactly right (labels drawn from them): the noise of ECE itself.

The same draws then run `calibrate` on the embedded head (`--interval-head`) and score its
predicted-error interval: 80 % interval coverage of the other trajectories' frames, before and after.

Each draw also records every map's NLL on the held-out frames, so the summary says how often
the choice (cross-validated NLL on the drawn frames) picked the map that held-out NLL prefers.
`--data`/`--head` (`--model`, `--interval-head`) run the same on another regime (any labelled frames with
info['trajectory_id']), e.g. the onset pool (examples/default_cu/make_onset_data.py), which the
head shipped before #11 never saw.

Usage: python benchmarks/quality/calibrate_split.py [--seeds 20] [--frames 100] [--data F... --head H --tag T]
       [--out benchmarks/results]
The other two regimes of the results folder:
  --data examples/default_cu/work/onset_pool.extxyz --tag onset_pool
  --data benchmarks/quality/data/large_test.extxyz.gz benchmarks/quality/data/large_test_b.extxyz.gz --frames 45 --tag large_cells
and a retraining round's regime (benchmarks/quality/data/retrain_round1/README.md), in 50-step
blocks and in whole runs:
  R=benchmarks/quality/data/retrain_round1
  --data $R/hot_cu_round1.extxyz.gz --head $R/head_before_calibration.pt --interval-head $R/head_before_calibration.pt
      --model $R/model.pt --tag retrain_round1 [--trajectory-key run --tag retrain_round1_by_run]
and the embedded model's and head's (nearly calibrated: what `calibrate` must not spoil):
  --data benchmarks/quality/data/hot_cu_round0/hot_cu_round0.extxyz.gz --head probe_md/data/default/cu_head.pt
      --tag hot_cu_round0 [--trajectory-key run --tag hot_cu_round0_by_run]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from probe_md import defaults, metrics
from probe_md.calibration import binary_nll, fit_logit_map
from probe_md.cache import feature_cache_dir
from probe_md.error_prediction import PooledStructures, interval_coverage, pooled_vectors, predicted_errors
from probe_md.evaluation import load_matching_head, write_json
from probe_md.features import head_inputs, predict_dataset
from probe_md.error_recalibration import error_terms, fit_error_shift, reads_its_error
from probe_md.recalibration import base_logits, refit_calibration
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


def both_classes(is_reliable: np.ndarray) -> bool:
    """At least 2 frames of each class: what recalibration needs."""
    return min(int(is_reliable.sum()), int((~is_reliable).sum())) >= 2


def ece_floor(p: np.ndarray, draws: int = 100) -> float:
    return float(np.median([metrics.expected_calibration_error(p, np.random.default_rng(i).random(len(p)) < p)
                            for i in range(draws)]))


def subset(pooled: PooledStructures, rows: np.ndarray) -> PooledStructures:
    return PooledStructures(pooled.vectors[rows], pooled.atom_counts[rows])


def recalibrated(head, pooled: PooledStructures, errors: np.ndarray, threshold: float, fit: np.ndarray):
    """A copy of `head` after `probe-md calibrate` on the drawn frames, and its report."""
    refitted = copy.deepcopy(head)
    report = refit_calibration(refitted, subset(pooled, fit), errors[fit], threshold)
    return refitted, report


def interval_rows(head_path: Path, model_path: Path, structures: list, predictions: list, trajectories: np.ndarray,
                  frames: int, seeds: int) -> list[dict]:
    """Per draw: the head's interval coverage of the held-out frames, before and after
    `calibrate` on the drawn frames (its conformal offset, and the median when it moves it)."""
    head, info, _ = load_matching_head(head_path, model_path)
    errors = structure_errors(predictions, structures, info.criterion)
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    before = predicted_errors(head, pooled)
    rows = []
    for seed in range(seeds):
        fit = trajectory_split(trajectories, frames, seed)
        if not both_classes(label_reliable(errors[fit], info.threshold)):
            continue
        refitted, report = recalibrated(head, pooled, errors, info.threshold, fit)
        after = predicted_errors(refitted, pooled)
        rows.append({"seed": seed, "coverage_before": interval_coverage(before[~fit], errors[~fit]),
                     "coverage_after": interval_coverage(after[~fit], errors[~fit]),
                     "offset": float(refitted.error_interval_offset), "chosen": report["chosen"]})
    return rows


def held_out_logits(head, pooled: PooledStructures, errors: np.ndarray, threshold: float, fit: np.ndarray) -> dict:
    """Logits of the held-out frames under each map fitted on the drawn ones: temperature +
    bias, isotonic, the predicted error's shift (heads that read their error) and what
    `calibrate` chose among them."""
    logits, is_reliable = base_logits(head, pooled), label_reliable(errors, threshold)
    held_out = ~fit
    out = {kind: fit_logit_map(kind, logits[fit], is_reliable[fit]).apply(logits[held_out])
           for kind in ("temperature", "isotonic")}
    if reads_its_error(head):
        terms = error_terms(head, pooled, errors, threshold)
        out["error"] = fit_error_shift(terms, np.flatnonzero(fit)).logits(terms, np.flatnonzero(held_out))
    refitted, report = recalibrated(head, pooled, errors, threshold, fit)
    with torch.no_grad():
        out["chosen"] = refitted.readout_logit(*subset(pooled, np.flatnonzero(held_out))).double().numpy()
    return {"before": logits[held_out], **out, "kind": report["chosen"]}


def map_row(seed: int, head, pooled: PooledStructures, errors: np.ndarray, threshold: float, fit: np.ndarray) -> dict:
    """One draw: each map fitted on the drawn frames, ECE and NLL on the others."""
    is_reliable = label_reliable(errors, threshold)[~fit]
    logits = held_out_logits(head, pooled, errors, threshold, fit)
    row = {"seed": seed, "fit_frames": int(fit.sum()), "held_out_frames": int((~fit).sum()), "chosen": logits.pop("kind")}
    for kind, mapped in logits.items():
        row[f"ece_{kind}"] = metrics.expected_calibration_error(expit(mapped), is_reliable)
        row[f"held_out_nll_{kind}"] = binary_nll(mapped, is_reliable)
    row["ece_floor"] = ece_floor(expit(logits["chosen"]))
    return row


def summarize(rows: list[dict]) -> dict:
    """Medians over draws, and how often the choice (by cross-validated NLL on the drawn frames)
    picked the map with the lowest NLL on the held-out frames."""
    kinds = [k[len("ece_"):] for k in rows[0] if k.startswith("ece_") and k != "ece_floor"]
    summary = {f"ece_{kind}": float(np.median([r[f"ece_{kind}"] for r in rows])) for kind in kinds + ["floor"]}
    candidates = [k for k in kinds if k not in ("before", "chosen")]
    best = [min(candidates, key=lambda k: r[f"held_out_nll_{k}"]) for r in rows]
    summary.update({f"draws_{k}_lowest_held_out_nll": best.count(k) for k in candidates})
    summary["draws_choice_matches_held_out_nll"] = sum(b == r["chosen"] for b, r in zip(best, rows))
    summary["draws_chosen"] = {k: sum(r["chosen"] == k for r in rows) for k in candidates}
    summary["draws"] = len(rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA / "onset_test.extxyz.gz"],
                        help="labelled frames with info['trajectory_id'] (default: the onset benchmark)")
    parser.add_argument("--head", type=Path, default=DATA / "cu_head_before_onset.pt", help="the head to recalibrate")
    parser.add_argument("--interval-head", type=Path, default=None,
                        help="the head whose predicted-error interval is refitted (default: the embedded one)")
    parser.add_argument("--model", type=Path, default=None, help="the MLIP of both heads (default: the embedded one)")
    parser.add_argument("--trajectory-key", default="trajectory_id",
                        help="the info key whose values are drawn whole (default: trajectory_id)")
    parser.add_argument("--tag", default=None, help="results go to calibrate_split_<tag>.json (default: calibrate_split.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    model = args.model or defaults.default_model_path()
    interval_head = args.interval_head or defaults.default_head_path()
    head, info, backbone = load_matching_head(args.head, model)
    structures = [atoms for path in args.data for atoms in read_structures(path)]
    trajectories = np.array([a.info[args.trajectory_key] for a in structures])
    predictions = predict_dataset(backbone, structures, feature_cache_dir(), "features")
    errors = structure_errors(predictions, structures, info.criterion)
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    is_reliable = label_reliable(errors, info.threshold)
    rows = []
    for seed in range(args.seeds):
        fit = trajectory_split(trajectories, args.frames, seed)
        if not both_classes(is_reliable[fit]):
            print(f"seed {seed}: the drawn frames hold fewer than 2 of a class, skipped")
            continue
        rows.append(map_row(seed, head, pooled, errors, info.threshold, fit))
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    summary = summarize(rows)
    print("median over draws: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    intervals = interval_rows(interval_head, model, structures, predictions, trajectories, args.frames, args.seeds)
    after = [r["coverage_after"] for r in intervals]
    summary["interval_coverage_before"] = float(np.median([r["coverage_before"] for r in intervals]))
    summary["interval_coverage_after"] = float(np.median(after))
    print(f"{interval_head.name}'s 80 % interval on the held-out frames: coverage {summary['interval_coverage_before']:.3f} -> "
          f"{summary['interval_coverage_after']:.3f} (median; {min(after):.3f}-{max(after):.3f}, "
          f"{sum(0.75 <= c <= 0.85 for c in after)} of {len(after)} draws in 0.75-0.85)")
    name = "calibrate_split.json" if args.tag is None else f"calibrate_split_{args.tag}.json"
    write_json({"data": [str(path) for path in args.data], "head": str(args.head), "model": str(model),
                "interval_head": str(interval_head), "frames": args.frames, "drawn_whole": args.trajectory_key, "rows": rows,
                "interval_rows": intervals, "median": summary}, args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
