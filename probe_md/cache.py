"""The one per-user cache folder of probe-md (backbone features, the LAMMPS plugin build)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PROBE_MD_CACHE, else $XDG_CACHE_HOME/probe-md, else ~/.cache/probe-md."""
    if os.environ.get("PROBE_MD_CACHE"):
        return Path(os.environ["PROBE_MD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "probe-md"


def feature_cache_dir() -> Path:
    """Where backbone predictions over data sets are cached (keyed by model and data hashes)."""
    return cache_root() / "features"
