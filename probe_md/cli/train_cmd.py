"""probe-md train: features + labels + fit + calibrate -> head file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from probe_md.cli.common import add_cache_argument, add_reference_key_arguments, cache_dir, reference_keys
from probe_md.pipeline import TrainRequest, train_probe
from probe_md.reliability_labels import CRITERIA
from probe_md.training import TrainingConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="MACE model (default: embedded Cu)")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="labelled extxyz file(s)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="head file to write")
    parser.add_argument("--criterion", choices=CRITERIA, default=TrainRequest.criterion,
                        help="error measure that defines 'reliable' (default %(default)s)")
    parser.add_argument("--threshold", type=float, default=TrainRequest.threshold,
                        help="error threshold, eV/Å or eV/atom (default: 2 x the RMS error on --in-domain, "
                             "else on the best quarter of --data)")
    parser.add_argument(
        "--in-domain",
        type=Path,
        default=TrainRequest.in_domain_path,
        help="the MLIP's validation data: default threshold = 2 x its RMS error",
    )
    parser.add_argument("--max-epochs", type=int, default=TrainingConfig.max_epochs,
                        help="epoch limit of the head fit; it stops earlier when the validation "
                             "loss stops improving (default %(default)s)")
    parser.add_argument("--seed", type=int, default=TrainingConfig.seed,
                        help="seed of the data split and the head's initial weights (default %(default)s)")
    parser.add_argument("--no-force-norm", dest="force_norm", action="store_false",
                        help="the head reads the backbone's features only, not also the MLIP's "
                             "per-atom force norm")
    add_reference_key_arguments(parser)
    add_cache_argument(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md.defaults import default_model_path

    request = TrainRequest(
        model_path=args.model or default_model_path(),
        data_paths=args.data,
        output_path=args.output,
        in_domain_path=args.in_domain,
        criterion=args.criterion,
        threshold=args.threshold,
        keys=reference_keys(args),
        cache_dir=cache_dir(args),
        training=TrainingConfig(max_epochs=args.max_epochs, seed=args.seed),
        force_norm=args.force_norm,
    )
    _, info = train_probe(request)
    print(f"wrote {args.output}: threshold {info.threshold:.4g} ({info.criterion})")
    print(json.dumps(info.training, indent=1))
    return 0
