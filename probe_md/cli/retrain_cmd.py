"""`probe-md retrain`: fine-tune MACE (mace_run_train) on old + new data, refit the PROBE head, export.

mace_run_train fine-tunes a python model. --foundation-model is either the pickled
mace-torch `.model` written when the model was trained (trusted: unpickling runs code), or
a probe-md TorchScript file with its architecture config next to it (`<file>.mace_config.json`,
written by `probe-md convert-mace` and by retrain itself): the python model is rebuilt from
it. Without --foundation-model the embedded Cu default is retrained, with its shipped
training/validation data and head pool. Each round writes `retrained.model` and `model.pt`
(with its config) into OUT: either is the --foundation-model of the next round.

Carved structures (`collect --carve`) are fitted on their core atoms' forces only (buffer
atoms weigh 0), by probe-md's atom-weighted loop over mace's model and loss terms, since
mace_run_train weighs forces per structure only.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from probe_md.cli.common import add_reference_key_arguments, reference_keys
from probe_md.loop.retrain import ConfigFieldError, RetrainConfig

# option -> (RetrainConfig field, type, help): the option's default is the field's default
TUNING_OPTIONS: dict[str, tuple[str, type, str]] = {
    "--max-old": ("max_old_frames", int, "replay at most this many old frames (default: all)"),
    "--holdout-fraction": ("holdout_fraction", float,
                           "new frames held out of training to report an honest error (default %(default)s)"),
    "--new-valid-fraction": ("new_valid_fraction", float,
                             "share of the remaining new frames put in mace's validation set, so its "
                             "best-epoch pick also weighs the new region (default %(default)s)"),
    "--epochs": ("epochs", int, "mace_run_train --max_num_epochs (default %(default)s)"),
    "--batch-size": ("batch_size", int, "mace_run_train --batch_size, structures per step (default %(default)s)"),
    "--lr": ("lr", float, "fine-tuning learning rate (default %(default)s)"),
    "--ema-decay": ("ema_decay", float, "EMA of the weights during fine-tuning, 0 = off (default %(default)s)"),
    "--seed": ("seed", int, "seed of the data splits and of mace_run_train (default %(default)s)"),
    "--device": ("device", str, "torch device for fine-tuning, e.g. cuda (default %(default)s)"),
    "--energy-weight": ("energy_weight", float,
                        "mace_run_train --energy_weight (default %(default)s, the embedded Cu default's "
                        "last training stage; match your foundation's)"),
    "--forces-weight": ("forces_weight", float, "mace_run_train --forces_weight (default %(default)s)"),
    "--new-frame-weight": ("new_frame_weight", float,
                           "loss weight of each new frame relative to an old one (default %(default)s)"),
    "--stress-weight": ("stress_weight", float,
                        "also fit REF_stress with this weight (mace --loss=stress); 0 = energies and "
                        "forces only (default %(default)s, as the embedded Cu default)"),
    "--threshold": ("head_threshold", float,
                    "head error threshold (eV/Å; default: --before-head's, else 2 x RMS error on --valid-data)"),
    "--head-max-epochs": ("head_max_epochs", int,
                          "epoch limit of the PROBE head refit (default: probe-md train's --max-epochs)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--new-data", type=Path, nargs="+", required=True,
                        help="newly labelled frames (output of `probe-md label`)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument("--foundation-model", type=Path, default=None,
                        help="model to fine-tune: a pickled mace-torch .model (you must trust it: unpickling "
                             "runs code) or a probe-md .pt with its .mace_config.json (default: the embedded Cu model)")
    parser.add_argument("--before-model", type=Path, default=None,
                        help="TorchScript of the model in use, for the 'before' errors (default: the foundation)")
    parser.add_argument("--before-head", type=Path, default=None,
                        help="the PROBE head in use: the refitted head keeps its criterion and threshold "
                             "(default for the embedded Cu model: the shipped head)")
    parser.add_argument("--old-data", type=Path, nargs="*", default=None,
                        help="the MLIP's original training data, replayed against forgetting")
    parser.add_argument("--valid-data", type=Path, default=None,
                        help="the MLIP's validation data (also sets the head threshold: 2 x its RMS error)")
    parser.add_argument("--head-data", type=Path, nargs="*", default=None,
                        help="PROBE head training pool; without it the head is not refitted")
    parser.add_argument("--calibration-data", type=Path, nargs="+", default=(),
                        help="labelled frames of the regime the model will run in, picked regardless of the "
                             "monitor (e.g. every k-th frame of a run, labelled with `probe-md label`): the "
                             "refitted head is recalibrated on them (>= 20 frames) instead of on the held-out "
                             "new frames, which the monitor picked")
    for option, (field_name, value_type, help_text) in TUNING_OPTIONS.items():
        parser.add_argument(option, type=value_type, default=getattr(RetrainConfig, field_name), help=help_text)
    parser.add_argument("--carved-energies", action="store_true",
                        help="fit the reference energies and stresses of carved structures (collect --carve) too; "
                             "default: only their core atoms' forces, as the energy of a piece cut out of a "
                             "frame (with its surfaces) is rarely meaningful")
    parser.add_argument("--no-export", action="store_true", help="do not write the fused model")
    parser.add_argument("--mace-args", default="",
                        help="extra mace_run_train flags as one string, e.g. --mace-args='--ema --ema_decay=0.99'")
    add_reference_key_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md.mpi import run_on_rank_zero

    return run_on_rank_zero(lambda: _retrain(args))


def _retrain(args: argparse.Namespace) -> int:
    from probe_md.loop.retrain import default_foundation_model, format_report, retrain

    using_default = args.foundation_model is None
    foundation = default_foundation_model() if using_default else args.foundation_model
    old_data, valid_data, head_data = args.old_data, args.valid_data, args.head_data
    before_model, before_head = args.before_model, args.before_head
    if using_default:  # the embedded Cu default: its own data sets and TorchScript file
        from probe_md import defaults

        old_data = old_data if old_data is not None else [defaults.default_mlip_train_path()]
        valid_data = valid_data or defaults.default_mlip_valid_path()
        head_data = head_data if head_data is not None else [defaults.default_head_pool_path()]
        before_model = before_model or defaults.default_model_path()
        before_head = before_head or defaults.default_head_path()
    tuning = {field_name: getattr(args, option[2:].replace("-", "_"))
              for option, (field_name, _, _) in TUNING_OPTIONS.items()}
    tuning["ema_decay"] = tuning["ema_decay"] or None  # 0 = off
    config = _config(
        foundation_model=foundation,
        new_data=args.new_data,
        out_dir=args.out,
        old_data=old_data or (),
        valid_data=valid_data,
        head_data=head_data or (),
        calibration_data=args.calibration_data,
        before_model=before_model,
        before_head=before_head,
        export=not args.no_export,
        carved_energies=args.carved_energies,
        extra_mace_args=shlex.split(args.mace_args),
        keys=reference_keys(args),
        **tuning,
    )
    report = retrain(config)
    print(format_report(report))
    return 0


def _config(**fields) -> RetrainConfig:
    """RetrainConfig(**fields), its errors naming the command-line option instead of the field."""
    try:
        return RetrainConfig(**fields)
    except ConfigFieldError as error:
        options = {field_name: option for option, (field_name, _, _) in TUNING_OPTIONS.items()}
        option = options.get(error.field, "--" + error.field.replace("_", "-"))
        raise ValueError(f"{option} {error.problem}") from None
