"""`probe-md build-plugin`: build the LAMMPS plugin once (cached per user) and print its path."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "-j", type=int, default=2, help="parallel compile jobs (default 2)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if a cached plugin exists")
    parser.add_argument("--verbose", action="store_true", help="show the CMake and compiler output")


def run(args: argparse.Namespace) -> int:
    from probe_md.lammps.build import PLUGIN_FILE, plugin_dir, plugin_path

    if args.rebuild:
        (plugin_dir() / PLUGIN_FILE).unlink(missing_ok=True)
    print(plugin_path(build=True, jobs=args.jobs, verbose=args.verbose))
    return 0
