"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.structures import ReferenceKeys


def add_reference_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--energy-key", default="REF_energy", help="info key of reference energies")
    parser.add_argument("--forces-key", default="REF_forces", help="arrays key of reference forces")


def reference_keys(args: argparse.Namespace) -> ReferenceKeys:
    return ReferenceKeys(energy=args.energy_key, forces=args.forces_key)


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "probe_md" / "features",
        help="folder for cached backbone features (keyed by model and data hashes)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def cache_dir(args: argparse.Namespace) -> Path | None:
    return None if args.no_cache else args.cache_dir
