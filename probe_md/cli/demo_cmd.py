"""`probe-md demo`: the embedded Cu default heated past melting in LAMMPS, monitored by PROBE.

Also under MPI: `mpirun -np 2 probe-md demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


# (flag, DemoConfig field, help): the physics knobs, defaults read from DemoConfig
PHYSICS_OPTIONS = (
    ("--steps", "steps", "MD steps of the heating ramp"),
    ("--repeat", "repeat", "fcc cubic cells per side, 4*repeat^3 atoms"),
    ("--t-end", "t_end_k", "final thermostat temperature in K"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probe_md.cli.monitor_options import add_monitor_arguments
    from probe_md.lammps.demo import DemoConfig

    parser.add_argument("--out", type=Path, default=Path("probe_demo"),
                        help="output folder (default ./probe_demo)")
    for flag, field, text in PHYSICS_OPTIONS:
        value = getattr(DemoConfig, field)
        parser.add_argument(flag, type=type(value), default=value, help=f"{text} (default {value:g})")
    add_monitor_arguments(parser)
    parser.add_argument("--model", type=Path, default=None,
                        help="fused model from `probe-md export` (default: the embedded Cu model)")
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
