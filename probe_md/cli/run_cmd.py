"""`probe-md run input.lammps`: run a LAMMPS input with PROBE monitoring every N steps.

Also under MPI: `mpirun -np 2 probe-md run input.lammps`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--var wants NAME=VALUE, got {text!r}")
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="LAMMPS input script (uses pair_style probe/mace)")
    parser.add_argument("--every", type=int, default=10, help="score every N MD steps (default 10)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="flag a frame when P(reliable) falls below this (default 0.5)")
    parser.add_argument("--patience", type=int, default=3,
                        help="halt after this many consecutive flagged checks (default 3)")
    parser.add_argument("--on-drop", default="dump,halt",
                        help="what to do on flagged checks: dump, halt, dump,halt or none (default dump,halt)")
    parser.add_argument("--out", type=Path, default=Path("probe_run"),
                        help="output folder: reliability.jsonl, flagged.extxyz, reliability.png, "
                             "summary.json, halt.restart, log.lammps (default ./probe_run)")
    parser.add_argument("--var", dest="variables", action="append", type=parse_variable, default=[],
                        metavar="NAME=VALUE", help="set an input variable, like lmp -var (repeatable)")
    parser.add_argument("--elements", default=None,
                        help="element of each atom type, comma-separated (default: guessed from masses)")
    parser.add_argument("--quiet", action="store_true", help="no LAMMPS screen output")


def run(args: argparse.Namespace) -> int:
    from probe_md.lammps.driver import run_lammps_input

    summary = run_lammps_input(
        args.input,
        every=args.every,
        threshold=args.threshold,
        patience=args.patience,
        on_drop=args.on_drop,
        out_dir=args.out,
        variables=dict(args.variables),
        elements=args.elements.split(",") if args.elements else None,
        screen=not args.quiet,
    )
    return 0 if summary is not None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe-md run", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
