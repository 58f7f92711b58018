"""`probe-md export`: fuse a MACE model and a PROBE head into one TorchScript file for LAMMPS."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="TorchScript MACE model (default: the embedded Cu model)")
    parser.add_argument("--head", type=Path, default=None,
                        help="PROBE head file (default: the embedded Cu head)")
    parser.add_argument("-o", "--output", type=Path, default=Path("fused.pt"),
                        help="fused model file to write (default: fused.pt)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None,
                        help="precision of the exported MACE model and head (default: the model's own)")


def run(args: argparse.Namespace) -> int:
    from probe_md import defaults
    from probe_md.lammps.export import export_fused_model

    model = args.model if args.model is not None else defaults.default_model_path()
    head = args.head if args.head is not None else defaults.default_head_path()
    metadata = export_fused_model(model, head, args.output, dtype=args.dtype)
    print(
        f"wrote {args.output}: species [{', '.join(metadata['species'])}], "
        f"r_max {metadata['r_max']} A x {metadata['num_layers']} layers, {metadata['dtype']}, "
        f"threshold {metadata['threshold']:.3f} ({metadata['criterion']})"
    )
    print(f"use it in LAMMPS with: pair_style probe/mace {args.output}")
    return 0
