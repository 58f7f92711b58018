"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe_md.cache import feature_cache_dir
from probe_md.structures import ReferenceKeys


def add_reference_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--energy-key", default=ReferenceKeys.energy,
                        help="info key of reference energies (default %(default)s)")
    parser.add_argument("--forces-key", default=ReferenceKeys.forces,
                        help="arrays key of reference forces (default %(default)s)")


def reference_keys(args: argparse.Namespace) -> ReferenceKeys:
    return ReferenceKeys(energy=args.energy_key, forces=args.forces_key)


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=feature_cache_dir(),
        help="folder for cached backbone features, keyed by model and data hashes (default %(default)s; "
             "$PROBE_MD_CACHE moves it)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def cache_dir(args: argparse.Namespace) -> Path | None:
    return None if args.no_cache else args.cache_dir
