"""`probe-md label`: reference energies and forces for a frame pool, resumable after interruption."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.cli.common import add_reference_key_arguments, reference_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pool", type=Path, help="extxyz frames to label (e.g. from `probe-md collect`)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="labelled extxyz file to write")
    parser.add_argument("--calculator", required=True,
                        help="a named reference (cu-snap) or an ASE calculator as module:Class "
                             "(e.g. ase.calculators.emt:EMT)")
    parser.add_argument("--calc-kwargs", default=None,
                        help="JSON object of keyword arguments for the calculator, e.g. '{\"xc\": \"PBE\"}'")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_reference_key_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md.mpi import world_size_from_env
    from probe_md.loop.label import LabelFiles, calculator_factory, label_frames, parse_calc_kwargs
    from probe_md.structures import read_structures

    if world_size_from_env() > 1:
        # Reference calculators (LAMMPSlib, DFT codes) bring their own parallelism; several
        # ranks labelling the same pool would race on the partial file.
        raise RuntimeError("probe-md label runs as one process: start it without mpirun")
    make_calculator = calculator_factory(args.calculator, parse_calc_kwargs(args.calc_kwargs))
    frames = read_structures(args.pool, keys=None)
    try:
        result = label_frames(frames, make_calculator, args.output, args.calculator,
                              reference_keys(args), progress=not args.no_progress)
    except KeyboardInterrupt:
        partial = LabelFiles(args.output).partial
        print(f"\ninterrupted: labelled frames are kept in {partial}; rerun the same command to resume")
        return 130
    print(result.summary())
    for record in result.failures:
        print(f"  failed: frame {record['index']} (run {record['run']}, step {record['step']}): {record['error']}")
    if result.written:
        print(f"wrote {args.output}")
    return 0 if result.written else 1
