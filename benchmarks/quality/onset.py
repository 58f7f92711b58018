"""Issue #11: the onset benchmark, size transfer, predicted error and `probe-md calibrate`.

For each head (the embedded default; --before: the head shipped before the onset data, kept in
benchmarks/quality/data), on the shipped Cu test set, the onset benchmark (108/256-atom cells at
450-1150 K, +-1 % strain, with/without a vacancy) and the large cells (256-4000 atoms; the first
30, as reported since stop 11, and all 90 with large_test_b's 60 one-frame runs): PROBE vs
the K=4 ensemble's best measure vs feature density (AUROC), ECE, and the predicted error
(Spearman with the actual error, 80 % interval coverage). Then the calibrate experiment: the
`--before` head recalibrated on N frames of the onset regime (from the onset pool, other
trajectories and seeds), ECE on the onset benchmark before and after.

Usage: python benchmarks/quality/onset.py [--onset-pool work/onset_pool.extxyz] [--out benchmarks/results]
The data: examples/default_cu/make_onset_data.py (onset_test and large_test are stored gzipped
in benchmarks/quality/data/).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import numpy as np

from probe_md import defaults, metrics
from probe_md.evaluation import EvaluateRequest, evaluate, write_json
from probe_md.io_utils import atomic_output
from probe_md.recalibration import CalibrateRequest, calibrate

DATA = Path(__file__).resolve().parent / "data"
LARGE_PARTS = (DATA / "large_test.extxyz.gz", DATA / "large_test_b.extxyz.gz")


def large_all(work: Path) -> Path:
    """Both parts of the large cells in one file (written once per run, in the work folder)."""
    path = work / "large_all.extxyz"
    with atomic_output(path) as tmp:
        ase.io.write(tmp, [atoms for part in LARGE_PARTS for atoms in ase.io.read(part, index=":")], format="extxyz")
    return path


SETS = {  # name -> the data file, given the work folder
    "shipped test": lambda work: defaults.default_test_data_path(),
    "onset": lambda work: DATA / "onset_test.extxyz.gz",
    "large cells": lambda work: LARGE_PARTS[0],
    "large cells, all": large_all,
}
BEFORE_HEAD = DATA / "cu_head_before_onset.pt"


def row(report: dict) -> dict:
    """The numbers the issue asks for, from one evaluate report."""
    methods = {m[metrics.NAME]: m for m in report["methods"]}
    ensemble = {k: v for k, v in methods.items() if k.startswith("ensemble")}
    best_name = max(ensemble, key=lambda k: ensemble[k][metrics.AUROC]) if ensemble else None
    predicted = report.get("probe_predicted_error", {"available": False})
    return {
        "n": report["n_structures"],
        "reliable": report["reliable"],
        "unreliable": report["unreliable"],
        "probe_auroc": methods["PROBE (1 - p)"][metrics.AUROC],
        "ensemble_best_auroc": ensemble[best_name][metrics.AUROC] if best_name else float("nan"),
        "ensemble_best": best_name,
        "density_auroc": methods.get("feature density (Mahalanobis)", {}).get(metrics.AUROC, float("nan")),
        "ece": report["probe_calibration"]["ece"],
        "error_spearman": predicted.get("spearman", float("nan")),
        "interval_coverage": predicted.get("interval_coverage", float("nan")),
    }


# The ensemble costs 3 more MACE passes per structure: on the large cells only PROBE's
# calibration and predicted error are asked for (size transfer), so it is left out there.
WITH_ENSEMBLE = ("shipped test", "onset")


def evaluate_head(head: Path, data: dict[str, Path]) -> dict:
    ensemble = defaults.default_ensemble_paths()
    return {
        name: row(evaluate(EvaluateRequest(model_path=ensemble[0], head_path=head, data_path=path,
                                           ensemble_paths=ensemble[1:] if name in WITH_ENSEMBLE else [])))
        for name, path in data.items()
    }


def calibrate_experiment(onset_pool: Path, frames: int, work: Path) -> dict:
    """The --before head recalibrated on `frames` random onset-pool frames; ECE on the benchmark."""
    pool = ase.io.read(onset_pool, index=":")
    chosen = np.random.default_rng(0).choice(len(pool), size=min(frames, len(pool)), replace=False)
    subset = work / f"onset_pool_{frames}.extxyz"
    ase.io.write(subset, [pool[i] for i in sorted(chosen)])
    recalibrated = work / f"cu_head_before_onset_calibrated_{frames}.pt"
    recalibrated.unlink(missing_ok=True)
    fit = calibrate(CalibrateRequest(BEFORE_HEAD, [subset], recalibrated, defaults.default_model_path()))
    onset = SETS["onset"](work)
    before = row(evaluate(EvaluateRequest(defaults.default_model_path(), BEFORE_HEAD, onset)))
    after = row(evaluate(EvaluateRequest(defaults.default_model_path(), recalibrated, onset)))
    return {"frames": len(chosen), "fit": fit, "onset_ece_before": before["ece"], "onset_ece_after": after["ece"],
            "onset_auroc_before": before["probe_auroc"], "onset_auroc_after": after["probe_auroc"],
            "onset_coverage_before": before["interval_coverage"], "onset_coverage_after": after["interval_coverage"]}


def format_rows(title: str, rows: dict) -> list[str]:
    lines = [title, f"  {'set':<18}{'n (rel/unrel)':>16}{'PROBE':>7}{'ens.best':>9}{'density':>8}{'ECE':>7}"
                    f"{'err ρ':>7}{'cover':>7}"]
    for name, r in rows.items():
        lines.append(f"  {name:<18}{r['n']:>6} ({r['reliable']}/{r['unreliable']})".ljust(38)
                     + f"{r['probe_auroc']:>5.3f}{r['ensemble_best_auroc']:>9.3f}{r['density_auroc']:>8.3f}"
                       f"{r['ece']:>7.3f}{r['error_spearman']:>7.3f}{r['interval_coverage']:>7.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onset-pool", type=Path, default=Path("examples/default_cu/work/onset_pool.extxyz"))
    parser.add_argument("--frames", type=int, default=100, help="frames for the calibrate experiment")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = args.out / "onset_work"
    work.mkdir(parents=True, exist_ok=True)
    data = {name: path(work) for name, path in SETS.items()}
    result = {"embedded head": evaluate_head(defaults.default_head_path(), data),
              "head before onset data": evaluate_head(BEFORE_HEAD, data)}
    if args.onset_pool.is_file():
        result["calibrate"] = calibrate_experiment(args.onset_pool, args.frames, work)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(result, args.out / "onset.json")
    lines = format_rows("embedded head", result["embedded head"]) + format_rows("head before onset data", result["head before onset data"])
    if "calibrate" in result:
        c = result["calibrate"]
        lines.append(f"calibrate on {c['frames']} onset-pool frames ({c['fit']['chosen']}): onset ECE "
                     f"{c['onset_ece_before']:.3f} -> {c['onset_ece_after']:.3f}, AUROC {c['onset_auroc_before']:.3f} -> "
                     f"{c['onset_auroc_after']:.3f}")
    print("\n".join(lines))
    print(f"\nwrote {args.out / 'onset.json'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
