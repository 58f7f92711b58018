"""Closing the loop: collect flagged frames -> label them -> retrain the MLIP and its PROBE head.

`collect` picks a diverse, duplicate-free pool in the frozen feature space, `label` runs a
reference calculator on it (resumable), `retrain` fine-tunes MACE with mace-torch's own
trainer and refits the head. Each step reads and writes plain extxyz files.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable

# Launchers set one of these in every rank's environment; checking them first means a
# plain (non-MPI) command never pays for MPI initialisation.
_MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def mpi_world_size_from_env() -> int:
    for name in _MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def run_on_rank_zero(work: Callable[[], int]) -> int:
    """Run `work` on rank 0 only (under mpirun); every rank returns rank 0's exit code.

    An exception on rank 0 is re-raised there after the other ranks were told to stop, so
    `mpirun` never hangs waiting for ranks that sit in a collective.
    """
    if mpi_world_size_from_env() <= 1:
        return int(work() or 0)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() <= 1:
        return int(work() or 0)
    if comm.Get_rank() != 0:
        return int(comm.bcast(None, root=0))
    try:
        with _ase_serial():
            code = int(work() or 0)
    except BaseException:
        comm.bcast(2, root=0)
        raise
    comm.bcast(code, root=0)
    return code


@contextmanager
def _ase_serial():
    """Make ase.io serial on this rank: once mpi4py is imported, ase.io.read/write are
    collectives (rank 0 reads, then broadcasts) and would deadlock with one rank calling."""
    from ase import parallel

    previous = parallel.world.comm
    parallel.world.comm = parallel.DummyMPI()
    try:
        yield
    finally:
        parallel.world.comm = previous
