"""probe-md evaluate: PROBE vs ensemble disagreement vs feature density on a data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.cli.common import add_cache_argument, add_reference_key_arguments, cache_dir, reference_keys
from probe_md.evaluation import EvaluateRequest, evaluate, format_report, write_json
from probe_md.io_utils import check_output_path
from probe_md.reliability_labels import CRITERIA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="MACE model (default: embedded Cu)")
    parser.add_argument("--head", type=Path, default=None, help="PROBE head (default: embedded Cu)")
    parser.add_argument("--data", type=Path, default=None, help="labelled extxyz (default: embedded Cu test set)")
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="*",
        default=None,
        help="other ensemble members besides --model (default with the embedded model: its 3 members)",
    )
    parser.add_argument("--criterion", choices=CRITERIA, default=EvaluateRequest.criterion,
                        help="error measure that defines 'reliable' (default: the head's)")
    parser.add_argument("--threshold", type=float, default=EvaluateRequest.threshold,
                        help="error threshold, eV/Å or eV/atom (default: the head's)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--plots", type=Path, default=None, help="write PNG plots into this folder")
    add_reference_key_arguments(parser)
    add_cache_argument(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md import defaults

    if args.json is not None:
        check_output_path(args.json, "--json report")
    ensemble = args.ensemble
    if ensemble is None:
        ensemble = defaults.default_ensemble_paths()[1:] if args.model is None else []
    request = EvaluateRequest(
        model_path=args.model or defaults.default_model_path(),
        head_path=args.head or defaults.default_head_path(),
        data_path=args.data or defaults.default_test_data_path(),
        ensemble_paths=ensemble,
        keys=reference_keys(args),
        criterion=args.criterion,
        threshold=args.threshold,
        cache_dir=cache_dir(args),
        plots_dir=args.plots,
    )
    report = evaluate(request)
    if args.json is not None:
        write_json(report, args.json)
    print(format_report(report))
    return 0
