"""probe-md convert-mace: a trusted pickled mace-torch model -> safe TorchScript file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="pickled mace-torch .model file (you must trust it)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="TorchScript file to write")


def run(args: argparse.Namespace) -> int:
    from probe_md.backbone.mace import MaceBackbone, save_mace_model
    from probe_md.io_utils import check_output_path

    check_output_path(args.output, "TorchScript file")
    source = MaceBackbone.from_file(args.model, allow_pickle=True)
    metadata = save_mace_model(source.model, args.output)
    print(
        f"wrote {args.output}: species {metadata.species}, r_max {metadata.r_max} Å, "
        f"{metadata.num_layers} layers, {len(metadata.feature_columns)} invariant features"
    )
    return 0
