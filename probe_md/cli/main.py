"""`probe-md` entry point: each subcommand lives in its own module with `add_arguments` + `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> (module, one-line help). Modules are imported only when their command runs,
# so `probe-md --help` stays fast and one broken optional piece cannot break the others.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("probe_md.cli.train_cmd", "extract features, label, fit and calibrate a PROBE head"),
    "evaluate": ("probe_md.cli.evaluate_cmd", "score a data set: PROBE vs ensemble and density baselines"),
    "convert-mace": ("probe_md.cli.convert_cmd", "convert a trusted pickled mace-torch model to a safe TorchScript file"),
    "export": ("probe_md.cli.export_cmd", "fuse a MACE model and a PROBE head into one TorchScript file for LAMMPS"),
    "build-plugin": ("probe_md.cli.build_plugin_cmd", "build (or locate) the LAMMPS plugin and print its path"),
    "run": ("probe_md.cli.run_cmd", "run a LAMMPS input with reliability monitoring every N steps"),
    "demo": ("probe_md.cli.demo_cmd", "the embedded Cu default heated past melting, monitored by PROBE"),
    "collect": ("probe_md.cli.collect_cmd", "gather flagged frames of MD runs into a diverse, duplicate-free pool"),
    "label": ("probe_md.cli.label_cmd", "label a frame pool with a reference ASE calculator (resumable)"),
    "retrain": ("probe_md.cli.retrain_cmd", "fine-tune MACE on old + new data, refit the PROBE head, export"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe-md", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _quiet_third_party_warnings() -> None:
    """Hide warnings users cannot act on (e3nn's torch.load flag, TorchScript deprecation)."""
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=".*TorchScript type system.*")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    _quiet_third_party_warnings()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"probe-md {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, RuntimeError) as error:
        # Users get one line naming the problem; tracebacks are for bugs, not bad input.
        print(f"probe-md {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
