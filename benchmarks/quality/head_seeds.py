"""Issue #11: how much of the embedded head's quality is its training seed.

Retrains the embedded default's head (same pool, threshold and settings as
examples/default_cu/train_head.py; only TrainingConfig.seed changes) for several seeds and
scores each on the shipped test set, the onset benchmark and the 90 large cells: AUROC, ECE,
predicted-error Spearman and 80 % interval coverage. On the large cells the interval is also
scored with the size law extrapolated past the largest training cell (the law the logit uses)
instead of stopped there, and the median predicted error's bias (median log residual) is
reported, since that bias moves coverage most.

Seed 0 is the shipped head. Needs examples/default_cu/work (make_data.py, make_onset_data.py).
Usage: python benchmarks/quality/head_seeds.py [--seeds 0 1 2 3 4 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe_md import defaults, metrics
from probe_md.cache import feature_cache_dir
from probe_md.error_prediction import interval_coverage, log_errors, pooled_vectors, predicted_errors
from probe_md.evaluation import load_matching_head, write_json
from probe_md.features import head_inputs, predict_dataset
from probe_md.reliability_labels import atom_force_errors, label_reliable, structure_errors
from probe_md.structures import read_structures
from probe_md.training import ProbeClassifier, TrainingConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onset import SETS  # noqa: E402  (the benchmark's data sets, one definition)

WORK = Path("examples/default_cu/work")
SCORED = ("shipped test", "onset", "large cells, all")


@dataclass
class LabelledSet:
    features: list[np.ndarray]  # head inputs per structure
    errors: np.ndarray  # criterion units
    atom_errors: list[np.ndarray] | None = None  # per-atom force errors (training pool only)


def load_sets(work: Path, out: Path) -> tuple[dict[str, LabelledSet], float]:
    """The training pool and the scored sets as head inputs (backbone passes cached), and the
    shipped head's threshold."""
    _, info, backbone = load_matching_head(defaults.default_head_path(), defaults.default_model_path())
    sources = {"pool": [work / "head_pool.extxyz", work / "onset_pool.extxyz"]}
    sources.update({name: [SETS[name](out / "onset_work")] for name in SCORED})
    sets = {}
    for name, paths in sources.items():
        structures = [a for path in paths for a in read_structures(path)]
        cache = work / "feature_cache" if name == "pool" else feature_cache_dir()  # as probe-md evaluate
        predictions = predict_dataset(backbone, structures, cache, name)
        sets[name] = LabelledSet(
            head_inputs(predictions, reads_force_norm=True),
            structure_errors(predictions, structures, info.criterion),
            atom_force_errors(predictions, structures) if name == "pool" else None,
        )
    return sets, info.threshold


def score(classifier: ProbeClassifier, data: LabelledSet, threshold: float) -> dict:
    is_reliable = label_reliable(data.errors, threshold)
    p = classifier.predict_proba(data.features)[:, 1]
    head = classifier.head_
    pooled = pooled_vectors(head, data.features)
    predicted = predicted_errors(head, pooled)
    stop = head.error_width_max_atoms.clone()
    head.error_width_max_atoms.fill_(float("inf"))  # the size law extrapolated, as in the logit
    extrapolated = predicted_errors(head, pooled)
    head.error_width_max_atoms.copy_(stop)
    residual = log_errors(data.errors, threshold).double().numpy() - np.log(predicted[:, 1])
    return {
        "auroc": metrics.auroc(1 - p, ~is_reliable),
        "ece": metrics.expected_calibration_error(p, is_reliable),
        "error_spearman": metrics.spearman(predicted[:, 1], data.errors),
        "interval_coverage": interval_coverage(predicted, data.errors),
        "interval_coverage_size_law_extrapolated": interval_coverage(extrapolated, data.errors),
        "median_log_residual": float(np.median(residual)),
    }


def train_and_score(sets: dict[str, LabelledSet], threshold: float, seed: int) -> dict:
    pool = sets["pool"]
    torch.manual_seed(seed)
    classifier = ProbeClassifier({"reads_force_norm": True}, TrainingConfig(seed=seed), verbose=False).fit(
        pool.features, label_reliable(pool.errors, threshold), pool.errors, threshold, pool.atom_errors)
    return {"seed": seed, "size_exponent": float(classifier.head_.error_width_size_exponent.detach()),
            **{name: score(classifier, sets[name], threshold) for name in SCORED}}


def summary_lines(rows: list[dict]) -> list[str]:
    lines = [f"{'seed':>4}  " + "  ".join(f"{name + ': AUROC/ECE/cover':>34}" for name in SCORED)
             + "  large: cover extrapolated, median log residual"]
    for r in rows:
        cells = "  ".join(f"{r[n]['auroc']:>22.3f}/{r[n]['ece']:.3f}/{r[n]['interval_coverage']:.3f}" for n in SCORED)
        large = r[SCORED[-1]]
        lines.append(f"{r['seed']:>4}  {cells}  {large['interval_coverage_size_law_extrapolated']:.3f}, "
                     f"{large['median_log_residual']:+.3f}")
    for name in SCORED:
        for key in ("auroc", "ece", "interval_coverage"):
            values = [r[name][key] for r in rows]
            lines.append(f"  {name} {key}: median {np.median(values):.3f}, range {min(values):.3f}-{max(values):.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--work", type=Path, default=WORK, help="examples/default_cu's work folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    for pool_file in ("head_pool.extxyz", "onset_pool.extxyz"):
        if not (args.work / pool_file).is_file():
            parser.error(f"{args.work / pool_file} is missing: run examples/default_cu/make_data.py and make_onset_data.py")
    start = time.perf_counter()
    (args.out / "onset_work").mkdir(parents=True, exist_ok=True)
    sets, threshold = load_sets(args.work, args.out)
    rows = []
    for seed in args.seeds:
        rows.append(train_and_score(sets, threshold, seed))
        print("\n".join(summary_lines(rows)[-1 - 3 * len(SCORED) : -3 * len(SCORED)]), flush=True)
    result = {"threshold": threshold, "seeds": rows, "wall_seconds": time.perf_counter() - start}
    write_json(result, args.out / "head_seeds.json")
    print("\n".join(summary_lines(rows)))
    print(f"\nwrote {args.out / 'head_seeds.json'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
