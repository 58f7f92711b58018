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
    from probe_md.cli.monitor_options import add_monitor_arguments
    from probe_md.lammps.monitor import MonitorConfig

    parser.add_argument("input", type=Path, help="LAMMPS input script (uses pair_style probe/mace)")
    add_monitor_arguments(parser)
    parser.add_argument("--on-drop", default=",".join(MonitorConfig.actions),
                        help="what to do on flagged checks: dump, halt, dump,halt or none (default dump,halt)")
    parser.add_argument("--every-when-low", type=int, default=None, metavar="N",
                        help="score every N steps (a divisor of --every) while the reliability is below "
                             "--warn, until it recovers (default: always --every)")
    parser.add_argument("--sample-every", type=int, default=None, metavar="N",
                        help="also write the frame of every check at a multiple of N steps (a multiple of "
                             "--every) to sampled.extxyz, flagged or not: an unbiased sample of the run to "
                             "label for `retrain --calibration-data` or to verify on (default: off)")
    parser.add_argument("--warn", type=float, default=None,
                        help="reliability below which --every-when-low applies (default: --threshold)")
    parser.add_argument("--out", type=Path, default=Path("probe_run"),
                        help="output folder: reliability.jsonl, flagged.extxyz, reliability.png, "
                             "summary.json, last_trusted.restart, halt.restart, log.lammps (default "
                             "./probe_run); a folder holding an earlier run is refused unless "
                             "--overwrite or --from")
    parser.add_argument("--from", dest="resume_from", type=Path, default=None, metavar="RESTART",
                        help="continue the input from this restart (e.g. OUT/last_trusted.restart), "
                             "appending to the logs in --out without duplicating steps")
    parser.add_argument("--no-trusted-restart", action="store_true",
                        help="do not keep last_trusted.restart (a restart at each passing check)")
    parser.add_argument("--var", dest="variables", action="append", type=parse_variable, default=[],
                        metavar="NAME=VALUE", help="set an input variable, like lmp -var (repeatable)")
    parser.add_argument("--elements", default=None,
                        help="element of each atom type, comma-separated (default: pair_coeff's map; "
                             "must agree with it)")
    parser.add_argument("--quiet", action="store_true", help="no LAMMPS screen output")


def run_options(args: argparse.Namespace):
    from probe_md.lammps.driver import RunOptions

    if args.overwrite and args.resume_from is not None:
        raise ValueError("--overwrite and --from exclude each other: --from continues the run in --out")
    mode = "resume" if args.resume_from is not None else "overwrite" if args.overwrite else "fresh"
    return RunOptions(folder_mode=mode, resume_from=args.resume_from,
                      trusted_restarts=not args.no_trusted_restart)


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
        every_when_low=args.every_when_low,
        warn=args.warn,
        options=run_options(args),
        sample_every=args.sample_every,
    )
    return summary["exit_code"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe-md run", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
