"""Reading and validating structure files (extxyz via ase.io) with reference labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import ase
import ase.io
import numpy as np


@dataclass(frozen=True)
class ReferenceKeys:
    """Where reference labels live (mace conventions by default)."""

    energy: str = "REF_energy"  # atoms.info[energy], eV
    forces: str = "REF_forces"  # atoms.arrays[forces], eV/Å
    stress: str = "REF_stress"  # atoms.info[stress], Voigt-6 eV/Å³ (ASE sign), periodic cells only


def read_structures(
    path: str | os.PathLike,
    keys: ReferenceKeys | None = ReferenceKeys(),
    index: str = ":",
) -> list[ase.Atoms]:
    """Read every structure of a file and check it; `keys=None` skips the reference check."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty")
    try:
        structures = ase.io.read(path, index=index)
    except Exception as error:  # ase raises many types for malformed files
        raise ValueError(f"data file {path} could not be read: {error}") from None
    if isinstance(structures, ase.Atoms):
        structures = [structures]
    if not structures:
        raise ValueError(f"data file {path} holds no structures")
    check_structures(structures, source=str(path), keys=keys)
    return list(structures)


def check_structures(
    structures: Sequence[ase.Atoms], source: str = "input", keys: ReferenceKeys | None = None
) -> None:
    """One-line errors for empty, non-finite or unlabelled structures."""
    for index, atoms in enumerate(structures):
        where = f"{source}: structure {index}"
        if len(atoms) == 0:
            raise ValueError(f"{where} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise ValueError(f"{where} has NaN or infinite positions")
        if np.any(atoms.pbc) and not np.all(np.isfinite(atoms.cell.array)):
            raise ValueError(f"{where} has a NaN or infinite cell")
        if keys is None:
            continue
        if keys.energy not in atoms.info:
            raise ValueError(f"{where} has no reference energy info['{keys.energy}'] (set --energy-key)")
        if keys.forces not in atoms.arrays:
            raise ValueError(f"{where} has no reference forces arrays['{keys.forces}'] (set --forces-key)")
        if not np.isfinite(float(atoms.info[keys.energy])) or not np.all(
            np.isfinite(atoms.arrays[keys.forces])
        ):
            raise ValueError(f"{where} has non-finite reference energy or forces")


def reference_energy(atoms: ase.Atoms, keys: ReferenceKeys) -> float:
    return float(atoms.info[keys.energy])


def reference_forces(atoms: ase.Atoms, keys: ReferenceKeys) -> np.ndarray:
    return np.asarray(atoms.arrays[keys.forces], dtype=np.float64)
