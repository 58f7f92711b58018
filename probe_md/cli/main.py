"""`probe-md` entry point: each subcommand lives in its own module with `add_arguments` + `run`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import sys
import warnings
from importlib import metadata

from probe_md.mpi import is_collective

# name -> (module, one-line help). Modules are imported only when their command runs,
# so `probe-md --help` stays fast and one broken optional piece cannot break the others.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("probe_md.cli.train_cmd", "extract features, label, fit and calibrate a PROBE head"),
    "evaluate": ("probe_md.cli.evaluate_cmd", "score a data set: PROBE vs ensemble and density baselines"),
    "calibrate": ("probe_md.cli.calibrate_cmd", "refit a head's calibration on labelled frames of your own regime"),
    "convert-mace": ("probe_md.cli.convert_cmd", "convert a trusted pickled mace-torch model to a safe TorchScript file"),
    "export": ("probe_md.cli.export_cmd", "fuse a MACE model and a PROBE head into one TorchScript file for LAMMPS"),
    "build-plugin": ("probe_md.cli.build_plugin_cmd", "build (or locate) the LAMMPS plugin and print its path"),
    "run": ("probe_md.cli.run_cmd", "run a LAMMPS input with reliability monitoring every N steps"),
    "demo": ("probe_md.cli.demo_cmd", "the embedded Cu default heated past melting, monitored by PROBE"),
    "collect": ("probe_md.cli.collect_cmd", "gather flagged frames of MD runs into a diverse, duplicate-free pool"),
    "label": ("probe_md.cli.label_cmd", "label a frame pool with a reference ASE calculator (resumable)"),
    "retrain": ("probe_md.cli.retrain_cmd", "fine-tune MACE on old + new data, refit the PROBE head, export"),
}
# Commands whose work loads MACE (the others need not pay for importing it).
MACE_COMMANDS = frozenset({"train", "evaluate", "calibrate", "convert-mace", "export", "demo", "collect", "retrain"})
# Printed (not warned or logged, so no filter reaches it) by mace.tools.cg on import.
CUEQUIVARIANCE_NOTICE = "Cuequivariance acceleration will be disabled"


def version_line() -> str:
    try:
        return f"probe-md {metadata.version('probe-md')}"
    except metadata.PackageNotFoundError:
        return "probe-md (version unknown: not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe-md", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the installed probe-md version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _quiet_third_party_warnings() -> None:
    """Hide warnings users cannot act on (e3nn's torch.load flag, TorchScript deprecation)."""
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=".*TorchScript type system.*")


@contextlib.contextmanager
def _library_progress_on_stdout():
    """While a command runs, print what probe_md's modules log at INFO and above as plain stdout
    lines, like the command's own output. Only the probe_md logger: other packages' INFO logs
    (matplotlib's, mace's) stay hidden."""
    logger = logging.getLogger("probe_md")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:  # main() may run many times in one process (tests): leave logging as it was
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _import_mace_without_notice() -> None:
    """Import mace's Clebsch-Gordan module once with its cuequivariance notice dropped from
    stdout; anything else it prints still gets through."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import mace.tools.cg  # noqa: F401
    except ImportError:  # a broken mace install is reported by the command that needs it
        pass
    finally:
        lines = captured.getvalue().splitlines(keepends=True)
        sys.stdout.write("".join(line for line in lines if CUEQUIVARIANCE_NOTICE not in line))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(version_line())
        return 0
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
    if name in MACE_COMMANDS:
        _import_mace_without_notice()
    try:
        with _library_progress_on_stdout():
            return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError, RuntimeError) as error:
        # Users get one line naming the problem; tracebacks are for bugs, not bad input.
        # Under mpirun an error every rank raised alike is printed once, by rank 0.
        if _rank() == 0 or not is_collective(error):
            print(f"probe-md {name}: error: {error}", file=sys.stderr)
        return 2


def _rank() -> int:
    """This process's MPI rank when mpi4py is already in use, else 0 (never imports MPI)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi.COMM_WORLD.Get_rank() if mpi is not None and mpi.Is_initialized() else 0


if __name__ == "__main__":
    sys.exit(main())
