"""`probe-md demo`: the embedded Cu default heated past melting in LAMMPS, monitored by PROBE.

Also under MPI: `mpirun -np 2 probe-md demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probe_md.lammps.demo import DemoConfig

    default = DemoConfig()
    parser.add_argument("--out", type=Path, default=Path("probe_demo"),
                        help="output folder (default ./probe_demo)")
    parser.add_argument("--steps", type=int, default=default.steps,
                        help=f"MD steps of the heating ramp (default {default.steps})")
    parser.add_argument("--repeat", type=int, default=default.repeat,
                        help=f"fcc cubic cells per side, 4*repeat^3 atoms (default {default.repeat})")
    parser.add_argument("--t-end", type=float, default=default.t_end_k,
                        help=f"final thermostat temperature in K (default {default.t_end_k:g})")
    parser.add_argument("--every", type=int, default=default.every,
                        help=f"score every N steps (default {default.every})")
    parser.add_argument("--threshold", type=float, default=default.threshold,
                        help=f"flag below this P(reliable) (default {default.threshold:g})")
    parser.add_argument("--patience", type=int, default=default.patience,
                        help=f"halt after this many consecutive flagged checks (default {default.patience})")
    parser.add_argument("--model", type=Path, default=None,
                        help="fused model from `probe-md export` (default: the embedded Cu model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo run in --out (default: refuse a folder holding one)")
    parser.add_argument("--screen", action="store_true", help="show LAMMPS screen output")


def run(args: argparse.Namespace) -> int:
    from probe_md.lammps.demo import DemoConfig, run_demo

    config = DemoConfig(
        repeat=args.repeat, steps=args.steps, t_end_k=args.t_end, every=args.every,
        threshold=args.threshold, patience=args.patience,
    )
    summary = run_demo(args.out, config, screen=args.screen, model=args.model, overwrite=args.overwrite)
    return summary["exit_code"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe-md demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
