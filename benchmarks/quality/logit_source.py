"""Issue #11: where the head's reliability logit should come from, measured over seeds.

Three ways to train the same head on the embedded default's pool (head_pool + onset_pool), each
with seeds 0..S-1, scored on the shipped test set, the onset benchmark and the large cells:
  classifier logit       the classifier readout, pinball weight 1, no per-atom target (before)
  error logit            the predicted error's margin below the threshold, pinball weight 3
  error logit + atoms    the same plus the per-atom force-error target (the default now)
Evidence for docs/notes/logit_from_error.md. Features come from the caches that
examples/default_cu/train_head.py and benchmarks/quality/onset.py fill (else MACE runs).

Usage: python benchmarks/quality/logit_source.py [--pool-dir examples/default_cu/work] [--seeds 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

from probe_md import defaults, metrics
from probe_md.backbone import load_backbone
from probe_md.error_prediction import interval_coverage
from probe_md.evaluation import write_json
from probe_md.features import predict_dataset
from probe_md.reliability_labels import atom_force_errors, structure_errors
from probe_md.structures import read_structures
from probe_md.training import ProbeClassifier, TrainingConfig, load_head

DATA = Path(__file__).resolve().parent / "data"
TEST_SETS = {
    "shipped test": defaults.default_test_data_path,
    "onset": lambda: DATA / "onset_test.extxyz.gz",
    "large cells": lambda: DATA / "large_test.extxyz.gz",
}
VARIANTS = {
    "classifier logit": dict(error_loss_weight=1.0, atom_error_loss_weight=0.0, logit_from_error=False),
    "error logit": dict(error_loss_weight=3.0, atom_error_loss_weight=0.0, logit_from_error=True),
    "error logit + atoms": dict(error_loss_weight=3.0, atom_error_loss_weight=2.0, logit_from_error=True),
}


def load_set(backbone, paths: list[Path], cache: Path) -> dict:
    structures = [a for p in paths for a in read_structures(p)]
    predictions = predict_dataset(backbone, structures, cache, paths[0].name)
    return {"features": [p.features for p in predictions],
            "errors": structure_errors(predictions, structures, "force-rmse"),
            "atom_errors": atom_force_errors(predictions, structures)}


def scores(classifier: ProbeClassifier, data: dict, threshold: float) -> dict:
    is_reliable = data["errors"] < threshold
    logit = classifier.predict_logit(data["features"])
    predicted = classifier.predict_error(data["features"])
    return {"auroc": metrics.auroc(-logit, ~is_reliable),
            "ece": metrics.expected_calibration_error(expit(logit), is_reliable),
            "error_spearman": metrics.spearman(predicted[:, 1], data["errors"]),
            "interval_coverage": interval_coverage(predicted, data["errors"])}


def fit(pool: dict, threshold: float, variant: dict, seed: int) -> ProbeClassifier:
    config = TrainingConfig(seed=seed, error_loss_weight=variant["error_loss_weight"],
                            atom_error_loss_weight=variant["atom_error_loss_weight"])
    by_error = variant["logit_from_error"]
    return ProbeClassifier(None, config, verbose=False).fit(
        pool["features"], pool["errors"] < threshold, pool["errors"],
        threshold if by_error else None, pool["atom_errors"] if variant["atom_error_loss_weight"] > 0 else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-dir", type=Path, default=Path("examples/default_cu/work"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    backbone = load_backbone(defaults.default_model_path())
    threshold = float(load_head(defaults.default_head_path())[1].threshold)  # the embedded head's
    pool = load_set(backbone, [args.pool_dir / "head_pool.extxyz", args.pool_dir / "onset_pool.extxyz"], args.pool_dir / "feature_cache")
    tests = {name: load_set(backbone, [path()], Path.home() / ".cache" / "probe-md" / "features") for name, path in TEST_SETS.items()}
    result: dict = {"threshold": threshold, "seeds": args.seeds, "variants": {}}
    for name, variant in VARIANTS.items():
        runs = []
        for seed in range(args.seeds):
            classifier = fit(pool, threshold, variant, seed)
            runs.append({set_name: scores(classifier, data, threshold) for set_name, data in tests.items()})
            print(name, seed, {s: {k: round(v, 3) for k, v in r.items()} for s, r in runs[-1].items()}, flush=True)
        result["variants"][name] = {"runs": runs, "mean": {
            s: {k: float(np.mean([r[s][k] for r in runs])) for k in runs[0][s]} for s in tests}}
    result["wall_seconds"] = time.perf_counter() - start
    write_json(result, args.out / "logit_source.json")
    print(f"\n{'variant':<22}{'set':<14}{'AUROC':>7}{'ECE':>7}{'err ρ':>7}{'cover':>7}   (mean of {args.seeds} seeds)")
    for name, entry in result["variants"].items():
        for s, m in entry["mean"].items():
            print(f"{name:<22}{s:<14}{m['auroc']:>7.4f}{m['ece']:>7.3f}{m['error_spearman']:>7.3f}{m['interval_coverage']:>7.2f}")
    print(f"\nwrote {args.out / 'logit_source.json'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
