"""probe-md calibrate: refit a head's calibration on labelled frames of your own regime."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.cli.common import add_cache_argument, add_reference_key_arguments, cache_dir, reference_keys
from probe_md.recalibration import CalibrateRequest, calibrate, format_calibration_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=Path, default=None, help="PROBE head to recalibrate (default: embedded Cu)")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="labelled extxyz file(s) of the regime to calibrate for (e.g. `probe-md label` output)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="recalibrated head file to write")
    parser.add_argument("--model", type=Path, default=None, help="MACE model the head reads (default: embedded Cu)")
    parser.add_argument("--folds", type=int, default=CalibrateRequest.folds,
                        help="cross-validation folds for choosing the calibration and reporting it (default %(default)s)")
    add_reference_key_arguments(parser)
    add_cache_argument(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md import defaults

    if args.folds < 2:
        raise ValueError(f"--folds must be >= 2, got {args.folds}")
    report = calibrate(
        CalibrateRequest(
            head_path=args.head or defaults.default_head_path(),
            data_paths=args.data,
            output_path=args.output,
            model_path=args.model or defaults.default_model_path(),
            keys=reference_keys(args),
            cache_dir=cache_dir(args),
            folds=args.folds,
        )
    )
    print(format_calibration_report(report))
    print(f"wrote {args.output}")
    return 0
