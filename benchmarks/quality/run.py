"""PROBE vs ensemble disagreement vs feature density on the embedded default's held-out set.

Usage: python benchmarks/quality/run.py [--data D.extxyz] [--out benchmarks/results]
Prints the table and writes quality.json plus the plots next to it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from probe_md import defaults
from probe_md.evaluation import EvaluateRequest, evaluate, format_report, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="default: the embedded Cu test set")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ensemble = defaults.default_ensemble_paths()
    report = evaluate(
        EvaluateRequest(
            model_path=ensemble[0],
            head_path=defaults.default_head_path(),
            data_path=args.data or defaults.default_test_data_path(),
            ensemble_paths=ensemble[1:],
            plots_dir=args.out / "quality_plots",
        )
    )
    report["wall_seconds"] = time.perf_counter() - start
    write_json(report, args.out / "quality.json")
    print(format_report(report))
    print(f"\nwrote {args.out / 'quality.json'} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
