"""Merge several scaling runs (e.g. small N with every case, large N with exchange yes only)
into one table, one set of derived ratios (speed-ups, linearity over all N) and one plot.

  python benchmarks/scaling/combine.py benchmarks/results/scaling.json benchmarks/results/scaling_large.json

A case measured in several files keeps the last file's measurement. Writes
benchmarks/results/scaling_all.json and .png and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import derived_results, markdown_tables, series_key, write_plot, write_report  # noqa: E402

COMBINED = HERE.parents[0] / "results" / "scaling_all.json"


def merged_cases(paths: list[Path]) -> list[dict]:
    """Every case summary of `paths`, one per (N, kind, ranks, exchange, dtype), sorted by N."""
    cases: dict[tuple, dict] = {}
    for path in paths:
        for summary in json.loads(path.read_text())["cases"]:
            summary.pop("ratio_to_bare", None)  # recomputed against the merged bare cases
            cases[(summary["atoms"], *series_key(summary))] = summary
    return [cases[key] for key in sorted(cases, key=lambda key: (key[0], key[1] != "bare", key[1:]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="scaling JSON files written by run.py")
    parser.add_argument("--fit-from", type=int, default=864, help="smallest N of the linearity fit")
    parser.add_argument("--out", type=Path, default=COMBINED)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    summaries = merged_cases(args.results)
    derived = derived_results(summaries, args.fit_from)
    write_report(args.out, {"sources": [str(p) for p in args.results], "cases": summaries, "derived": derived})
    write_plot(args.out.with_suffix(".png"), summaries)
    print(markdown_tables(summaries, derived))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
