"""`probe-md retrain`: fine-tune MACE (mace_run_train) on old + new data, refit the PROBE head, export.

mace_run_train fine-tunes a python model. --foundation-model is either the pickled
mace-torch `.model` written when the model was trained (trusted: unpickling runs code), or
a probe-md TorchScript file with its architecture config next to it (`<file>.mace_config.json`,
written by `probe-md convert-mace` and by retrain itself): the python model is rebuilt from
it. Without --foundation-model the embedded Cu default is retrained, with its shipped
training/validation data and head pool. Each round writes `retrained.model` and `model.pt`
(with its config) into OUT: either is the --foundation-model of the next round.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from probe_md.cli.common import add_reference_key_arguments, reference_keys
from probe_md.loop.retrain import RetrainConfig


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
    parser.add_argument("--max-old", type=int, default=RetrainConfig.max_old_frames,
                        help="replay at most this many old frames (default: all)")
    parser.add_argument("--holdout-fraction", type=float, default=RetrainConfig.holdout_fraction,
                        help="new frames held out of training to report an honest error (default %(default)s)")
    parser.add_argument("--new-valid-fraction", type=float, default=RetrainConfig.new_valid_fraction,
                        help="share of the remaining new frames put in mace's validation set, so its "
                             "best-epoch pick also weighs the new region (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=RetrainConfig.epochs,
                        help="mace_run_train --max_num_epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=RetrainConfig.batch_size,
                        help="mace_run_train --batch_size, structures per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=RetrainConfig.lr,
                        help="fine-tuning learning rate (default %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=RetrainConfig.ema_decay,
                        help="EMA of the weights during fine-tuning, 0 = off (default %(default)s)")
    parser.add_argument("--seed", type=int, default=RetrainConfig.seed,
                        help="seed of the data splits and of mace_run_train (default %(default)s)")
    parser.add_argument("--device", default=RetrainConfig.device,
                        help="torch device for fine-tuning, e.g. cuda (default %(default)s)")
    parser.add_argument("--energy-weight", type=float, default=RetrainConfig.energy_weight,
                        help="mace_run_train --energy_weight (default %(default)s, the embedded Cu default's "
                             "last training stage; match your foundation's)")
    parser.add_argument("--forces-weight", type=float, default=RetrainConfig.forces_weight,
                        help="mace_run_train --forces_weight (default %(default)s)")
    parser.add_argument("--new-frame-weight", type=float, default=RetrainConfig.new_frame_weight,
                        help="loss weight of each new frame relative to an old one (default %(default)s)")
    parser.add_argument("--stress-weight", type=float, default=RetrainConfig.stress_weight,
                        help="also fit REF_stress with this weight (mace --loss=stress); 0 = energies and "
                             "forces only (default %(default)s, as the embedded Cu default)")
    parser.add_argument("--threshold", type=float, default=RetrainConfig.head_threshold,
                        help="head error threshold (eV/Å; default: --before-head's, else 2 x RMS error on --valid-data)")
    parser.add_argument("--head-max-epochs", type=int, default=RetrainConfig.head_max_epochs,
                        help="epoch limit of the PROBE head refit (default: probe-md train's --max-epochs)")
    parser.add_argument("--no-export", action="store_true", help="do not write the fused model")
    parser.add_argument("--mace-args", default="",
                        help="extra mace_run_train flags as one string, e.g. --mace-args='--ema --ema_decay=0.99'")
    add_reference_key_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe_md.mpi import run_on_rank_zero

    return run_on_rank_zero(lambda: _retrain(args))


def _retrain(args: argparse.Namespace) -> int:
    from probe_md.loop.retrain import RetrainConfig, default_foundation_model, format_report, retrain

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
    config = RetrainConfig(
        foundation_model=foundation,
        new_data=args.new_data,
        out_dir=args.out,
        old_data=old_data or (),
        valid_data=valid_data,
        head_data=head_data or (),
        before_model=before_model,
        before_head=before_head,
        max_old_frames=args.max_old,
        holdout_fraction=args.holdout_fraction,
        new_valid_fraction=args.new_valid_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay or None,
        seed=args.seed,
        device=args.device,
        head_threshold=args.threshold,
        head_max_epochs=args.head_max_epochs,
        energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        new_frame_weight=args.new_frame_weight,
        stress_weight=args.stress_weight,
        export=not args.no_export,
        extra_mace_args=shlex.split(args.mace_args),
        keys=reference_keys(args),
    )
    report = retrain(config)
    print(format_report(report))
    return 0
