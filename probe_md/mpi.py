"""MPI helpers shared by the front ends: one place for "is there MPI" and rank agreement."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Final, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

# Launchers set one of these in every rank's environment; checking them first means a
# plain (non-MPI) command never pays for MPI initialisation.
_MPI_SIZE_VARIABLES: Final[tuple[str, ...]] = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def world_size_from_env() -> int:
    """The launcher's rank count, read without initialising MPI (1 outside mpirun)."""
    for name in _MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world_comm():
    """COMM_WORLD when mpi4py is there (1 rank is fine); None otherwise."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def resolve_comm(comm):
    """`comm="auto"` means COMM_WORLD when mpi4py is installed; anything else is kept."""
    return world_comm() if isinstance(comm, str) and comm == "auto" else comm


def rank_of(comm) -> int:
    return comm.Get_rank() if comm is not None else 0


def agree_max(comm, flags: Sequence[int]) -> list[int]:
    """Element-wise max of small integer flags over all ranks (collective; cheap: one
    Allreduce of a few ints, used on every MD step)."""
    if comm is None or comm.Get_size() == 1:
        return [int(f) for f in flags]
    from mpi4py import MPI

    local = np.asarray(flags, dtype=np.int64)
    result = np.empty_like(local)
    comm.Allreduce(local, result, op=MPI.MAX)
    return [int(f) for f in result]


def on_root(comm, work: Callable[[], T]) -> T:
    """Run `work()` on rank 0 and hand its result to every rank; its error is raised on all
    ranks (not only rank 0, which would leave the others waiting forever)."""
    if comm is None:
        return work()
    outcome = None
    if comm.Get_rank() == 0:
        try:
            outcome = (work(), None)
        except Exception as error:  # noqa: BLE001 - re-raised below on every rank
            outcome = (None, error)
    result, error = comm.bcast(outcome, root=0)
    if error is not None:
        raise mark_collective(error)
    return result


def mark_collective(error: BaseException) -> BaseException:
    """Tag an error that every rank raises alike, so the CLI prints it once (on rank 0)."""
    error.probe_md_collective = True
    return error


def is_collective(error: BaseException) -> bool:
    return bool(getattr(error, "probe_md_collective", False))


def run_on_rank_zero(work: Callable[[], int]) -> int:
    """Run a serial command's `work` on rank 0 only (under mpirun); every rank returns rank 0's
    exit code. An exception on rank 0 is re-raised there after the other ranks were told to
    stop, so `mpirun` never hangs waiting for ranks that sit in a collective."""
    if world_size_from_env() <= 1:
        return int(work() or 0)
    comm = world_comm()
    if comm is None or comm.Get_size() <= 1:
        return int(work() or 0)
    if comm.Get_rank() != 0:
        return int(comm.bcast(None, root=0))
    try:
        with ase_serial():
            code = int(work() or 0)
    except BaseException:
        comm.bcast(2, root=0)
        raise
    comm.bcast(code, root=0)
    return code


@contextmanager
def ase_serial():
    """Make ase.io serial on this rank: once mpi4py is imported, ase.io.read/write are
    collectives (rank 0 reads, then broadcasts) and would deadlock with one rank calling."""
    from ase import parallel

    previous = parallel.world.comm
    parallel.world.comm = parallel.DummyMPI()
    try:
        yield
    finally:
        parallel.world.comm = previous
