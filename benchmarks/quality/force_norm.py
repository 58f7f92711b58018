"""Issue #11, item 5: does the head gain from reading the MLIP's own per-atom force norm?

Two inputs for the same head and training (the defaults of `probe-md train`, force-RMSE
criterion), seeds 0..S-1 each:
  features              the backbone's invariant node features (before)
  features + force norm the same plus log(|F_i| + 1e-3) of the MLIP's force on each atom (now)
on Cu (the embedded default's pool; shipped test set, onset benchmark, large cells) and on Si
DFT (MACE small member 0 of benchmarks/si_dft; its held-out test split). Evidence for
docs/notes/force_norm_input.md. Features come from the caches of examples/default_cu/train_head.py,
benchmarks/quality/onset.py and benchmarks/si_dft/run.py (else MACE runs; Si needs its MLIPs).

Usage: python benchmarks/quality/force_norm.py [--seeds 4] [--sets cu si]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logit_source import TEST_SETS, scores  # noqa: E402

from probe_md import defaults  # noqa: E402
from probe_md.backbone import load_backbone  # noqa: E402
from probe_md.evaluation import write_json  # noqa: E402
from probe_md.features import head_inputs, predict_dataset  # noqa: E402
from probe_md.reliability_labels import atom_force_errors, default_threshold, structure_errors  # noqa: E402
from probe_md.structures import read_structures  # noqa: E402
from probe_md.training import ProbeClassifier, TrainingConfig  # noqa: E402

FEATURE_CACHE = Path.home() / ".cache" / "probe-md" / "features"
SI_WORK = HERE.parents[0] / "si_dft" / "work"
VARIANTS = {"features": False, "features + force norm": True}


def load_set(backbone, paths: list[Path], cache: Path) -> dict:
    """Both variants' head inputs, the force-RMSE errors and the per-atom force errors."""
    structures = [a for p in paths for a in read_structures(p)]
    predictions = predict_dataset(backbone, structures, cache, paths[0].name)
    return {"inputs": {name: head_inputs(predictions, reads) for name, reads in VARIANTS.items()},
            "errors": structure_errors(predictions, structures, "force-rmse"),
            "atom_errors": atom_force_errors(predictions, structures)}


def cu_sets(pool_dir: Path) -> tuple[dict, dict]:
    backbone = load_backbone(defaults.default_model_path())
    pool = load_set(backbone, [pool_dir / "head_pool.extxyz", pool_dir / "onset_pool.extxyz"], pool_dir / "feature_cache")
    tests = {name: load_set(backbone, [path()], FEATURE_CACHE) for name, path in TEST_SETS.items()}
    return pool, tests


def si_sets() -> tuple[dict, dict]:
    backbone = load_backbone(SI_WORK / "mlips" / "mace_small" / "seed0.pt")
    cache = SI_WORK / "features"
    pool = load_set(backbone, [SI_WORK / "data" / "probe_train.extxyz"], cache)
    tests = {"Si test": load_set(backbone, [SI_WORK / "data" / "test.extxyz"], cache)}
    return pool, tests


def in_domain_threshold(backbone_path: Path, valid: Path, cache: Path) -> float:
    """2 x the RMS force-RMSE error on the MLIP's validation data (`train --in-domain`)."""
    structures = read_structures(valid)
    predictions = predict_dataset(load_backbone(backbone_path), structures, cache, valid.name)
    return float(default_threshold(structure_errors(predictions, structures, "force-rmse")))


def compare(pool: dict, tests: dict, threshold: float, seeds: int) -> dict:
    out = {}
    for name in VARIANTS:
        runs = []
        for seed in range(seeds):
            classifier = ProbeClassifier(None, TrainingConfig(seed=seed), verbose=False).fit(
                pool["inputs"][name], pool["errors"] < threshold, pool["errors"], threshold, pool["atom_errors"])
            runs.append({s: scores(classifier, {"features": d["inputs"][name], "errors": d["errors"]}, threshold)
                         for s, d in tests.items()})
            print(name, seed, {s: {k: round(v, 3) for k, v in r.items()} for s, r in runs[-1].items()}, flush=True)
        out[name] = {"runs": runs, "mean": {s: {k: float(np.mean([r[s][k] for r in runs])) for k in runs[0][s]}
                                            for s in tests}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-dir", type=Path, default=Path("examples/default_cu/work"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--sets", nargs="+", choices=("cu", "si"), default=["cu", "si"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result: dict = {"seeds": args.seeds, "materials": {}}
    if "si" in args.sets:
        threshold = in_domain_threshold(SI_WORK / "mlips" / "mace_small" / "seed0.pt",
                                        SI_WORK / "data" / "mlip_valid.extxyz", SI_WORK / "features")
        result["materials"]["Si (MACE small)"] = {"threshold": threshold, "variants": compare(*si_sets(), threshold, args.seeds)}
    if "cu" in args.sets:
        threshold = in_domain_threshold(defaults.default_model_path(), args.pool_dir / "mlip_valid.extxyz",
                                        args.pool_dir / "feature_cache")
        result["materials"]["Cu (embedded)"] = {"threshold": threshold,
                                                "variants": compare(*cu_sets(args.pool_dir), threshold, args.seeds)}
    result["wall_seconds"] = time.perf_counter() - start
    write_json(result, args.out / "force_norm.json")
    print(f"\n{'material':<17}{'variant':<23}{'set':<14}{'AUROC':>7}{'ECE':>7}{'err ρ':>7}{'cover':>7}   (mean of {args.seeds} seeds)")
    for material, entry in result["materials"].items():
        for name, variant in entry["variants"].items():
            for s, m in variant["mean"].items():
                print(f"{material:<17}{name:<23}{s:<14}{m['auroc']:>7.4f}{m['ece']:>7.3f}"
                      f"{m['error_spearman']:>7.3f}{m['interval_coverage']:>7.2f}")
    print(f"\nwrote {args.out / 'force_norm.json'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
