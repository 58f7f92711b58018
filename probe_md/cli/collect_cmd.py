"""`probe-md collect`: flagged frames of one or many runs -> a diverse, duplicate-free pool to label."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.loop.collect import DEFAULT_MIN_BOND_FRACTION, DEFAULT_MIN_DISTANCE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, nargs="+",
                        help="run folders written by `probe-md run`/`demo` (or flagged extxyz files)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="pool extxyz file to write")
    parser.add_argument("--max", type=int, default=None, dest="max_frames",
                        help="keep at most this many frames (farthest-point sampling; default: all distinct)")
    parser.add_argument("--min-distance", type=float, default=DEFAULT_MIN_DISTANCE,
                        help="frames closer than this in the scaled feature space are near-duplicates "
                             "(default %(default)s)")
    parser.add_argument("--min-bond-fraction", type=float, default=DEFAULT_MIN_BOND_FRACTION,
                        help="drop frames with two atoms closer than this x the sum of their covalent "
                             "radii: MD blow-ups (default %(default)s; 0 keeps all)")
    parser.add_argument("--model", type=Path, default=None,
                        help="TorchScript MACE model whose features describe the frames (default: embedded Cu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from probe_md.mpi import run_on_rank_zero

    return run_on_rank_zero(lambda: _collect(args))


def _collect(args: argparse.Namespace) -> int:
    from probe_md.backbone.mace import MaceBackbone
    from probe_md.defaults import default_model_path
    from probe_md.io_utils import check_output_path
    from probe_md.loop.collect import collect_flagged, write_extxyz_atomic

    check_output_path(args.output, "pool file")
    backbone = MaceBackbone.from_file(args.model or default_model_path())
    result = collect_flagged(args.runs, backbone, args.max_frames, args.min_distance, not args.no_progress,
                             args.min_bond_fraction)
    for warning in result.warnings:
        print(f"warning: {warning}")
    write_extxyz_atomic(args.output, result.frames)
    print(result.summary())
    print(f"wrote {args.output}: {len(result.frames)} frames (provenance in info: run, step, reliability)")
    print(f"next: probe-md label {args.output} -o labelled.extxyz --calculator cu-snap")
    return 0
