"""The monitoring options `probe-md run` and `probe-md demo` share (defaults: MonitorConfig)."""

from __future__ import annotations

import argparse


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    """--every, --threshold, --patience, --overwrite."""
    from probe_md.lammps.monitor import MonitorConfig

    parser.add_argument("--every", type=int, default=MonitorConfig.every,
                        help=f"score every N MD steps (default {MonitorConfig.every})")
    parser.add_argument("--threshold", type=float, default=MonitorConfig.threshold,
                        help=f"flag a frame when P(reliable) falls below this (default {MonitorConfig.threshold:g})")
    parser.add_argument("--patience", type=int, default=MonitorConfig.patience,
                        help=f"halt after this many consecutive flagged checks (default {MonitorConfig.patience})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier run in --out (removed only once the new input reaches its "
                             "first run; default: refuse a folder holding one)")
