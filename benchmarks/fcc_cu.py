"""The fcc Cu cell the LAMMPS benchmarks build (one source for overhead/ and scaling/)."""

from __future__ import annotations

CU_FCC_A = 3.615  # Å; the bare MACE of scaling/ builds the same cell with ASE
CU_MASS = 63.546


def system_commands(repeat: int) -> list[str]:
    """LAMMPS commands for a periodic fcc Cu box of repeat^3 cubic cells (4 * repeat^3 atoms)."""
    return [
        "units metal",
        "atom_style atomic",
        "boundary p p p",
        f"lattice fcc {CU_FCC_A}",
        f"region box block 0 {repeat} 0 {repeat} 0 {repeat}",
        "create_box 1 box",
        "create_atoms 1 box",
        f"mass 1 {CU_MASS}",
    ]
