"""`probe-md collect`: flagged frames of one or many runs -> a diverse, duplicate-free pool to label.

With --carve, every frame is cut into small structures around its most important atoms (core
atoms, `arrays['probe_core']`, plus every atom within --buffer of them, in a box of their own):
labelable where the whole frame is not. Only core atoms' reference forces are trusted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.loop.carve import CarveConfig
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
    add_carve_arguments(parser.add_argument_group("carving (--carve)"))


def add_carve_arguments(group) -> None:
    defaults = CarveConfig()
    group.add_argument("--carve", action="store_true",
                       help="cut each frame into small structures around its most important atoms")
    group.add_argument("--top-k", type=int, default=defaults.top_k,
                       help="core atoms per frame: the most important ones (default %(default)s; 0 = no limit)")
    group.add_argument("--min-importance", type=float, default=defaults.min_importance,
                       help="core atoms need at least this importance, 1 = average atom (default %(default)s; "
                            "0 = any)")
    group.add_argument("--core-radius", type=float, default=defaults.core_radius,
                       help="Å: every atom this close to a picked atom is a core atom too; a compact core gives "
                            "more trusted forces per labelled atom (default %(default)s: the picked atoms only)")
    group.add_argument("--buffer", type=float, default=defaults.buffer,
                       help="Å kept around every core atom as in the frame (default: the model's "
                            "layers x r_max, 8 Å for the embedded Cu model)")
    group.add_argument("--link", type=float, default=defaults.link,
                       help="Å: core atoms closer than this form one region (default: the model's r_max)")
    group.add_argument("--gap", type=float, default=defaults.gap,
                       help="Å of vacuum between a carved structure and its periodic images (default: r_max)")
    group.add_argument("--max-atoms", type=int, default=defaults.max_atoms,
                       help="refuse carved structures larger than this (default %(default)s)")
    group.add_argument("--cluster", action="store_true",
                       help="carve clusters in vacuum (pbc False) instead of periodic boxes")


def carve_config(args: argparse.Namespace) -> CarveConfig | None:
    """The CarveConfig of --carve and its options (checked now, before any work), else None."""
    if not args.carve:
        return None
    return CarveConfig(top_k=args.top_k or None, min_importance=args.min_importance or None,
                       core_radius=args.core_radius, buffer=args.buffer,
                       link=args.link, gap=args.gap, max_atoms=args.max_atoms, periodic=not args.cluster)


def run(args: argparse.Namespace) -> int:
    from probe_md.mpi import run_on_rank_zero

    return run_on_rank_zero(lambda: _collect(args))


def _collect(args: argparse.Namespace) -> int:
    from probe_md.backbone.mace import MaceBackbone
    from probe_md.defaults import default_model_path
    from probe_md.io_utils import check_output_path
    from probe_md.loop.collect import collect_flagged, write_extxyz_atomic

    check_output_path(args.output, "pool file")
    carve = carve_config(args)
    backbone = MaceBackbone.from_file(args.model or default_model_path())
    result = collect_flagged(args.runs, backbone, args.max_frames, args.min_distance, not args.no_progress,
                             args.min_bond_fraction, carve)
    for warning in result.warnings:
        print(f"warning: {warning}")
    write_extxyz_atomic(args.output, result.frames)
    print(result.summary())
    what = "carved structures (core atoms in arrays['probe_core'])" if carve else "frames"
    print(f"wrote {args.output}: {len(result.frames)} {what} (provenance in info: run, step, reliability)")
    print(f"next: probe-md label {args.output} -o labelled.extxyz --calculator cu-snap")
    return 0
