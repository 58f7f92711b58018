"""Real DFT data for the Si benchmark: fetch PyXtal-FF's Si set, filter it, split it.

The data (6,887 Si cells of 1-16 atoms, VASP PBE energies and forces, from random PyXtal
crystal structures) ship inside the `pyxtal_ff` source distribution on PyPI; it is fetched
once with pip into `work/cache/` and never committed.

Filter (stated rule): drop exact duplicates, cells more than `MAX_EXCESS_EV_PER_ATOM` above
the lowest energy per atom, and cells with two atoms closer than `MIN_DISTANCE_A`
(absurdly compressed, far outside any MD of silicon).

Split (stated rule, seeded): the MLIP learns only low-energy cells (excess energy below
`LOW_ENERGY_EV_PER_ATOM`): `N_MLIP_TRAIN` for training and `N_MLIP_VALID` for validation
(the validation cells also set PROBE's default threshold: 2 x their RMS error). Every other
cell, low-energy leftovers and all higher-energy cells alike, is shuffled and cut in half:
PROBE trains on one half (`probe_train`) and everything is scored on the other (`test`).

About a third of the cells have exactly zero DFT forces (high-symmetry random crystals, and
every 1-atom cell); an equivariant MLIP gets those forces right by symmetry however wrong its
energy is, so the benchmark's default label is the energy error per atom.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.neighborlist import neighbor_list

SI_JSON_MEMBER = "pyxtal_ff/datasets/Si/PyXtal/Si.json"
PYXTAL_FF_VERSION = "0.2.3"
MAX_EXCESS_EV_PER_ATOM = 2.0
MIN_DISTANCE_A = 1.8
LOW_ENERGY_EV_PER_ATOM = 0.6
N_MLIP_TRAIN = 600
N_MLIP_VALID = 60
SPLIT_SEED = 20240
SHIFT_EV_PER_ATOM = 1.0  # the "shifted" variant: PROBE trains below, is tested above
SPLITS = ("mlip_train", "mlip_valid", "probe_train", "test")


def fetch_si_json(cache_dir: Path) -> Path:
    """Si.json from the pyxtal_ff sdist (pip download, no install, no dependencies)."""
    target = cache_dir / "Si.json"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"pyxtal_ff=={PYXTAL_FF_VERSION}", "-d", str(cache_dir)],
        check=True,
    )
    archive = next(cache_dir.glob(f"pyxtal_ff-{PYXTAL_FF_VERSION}.tar.gz"))
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"pyxtal_ff-{PYXTAL_FF_VERSION}/{SI_JSON_MEMBER}")
        data = tar.extractfile(member).read()
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def read_si_json(path: Path) -> list[ase.Atoms]:
    """PyXtal-FF records (fractional coords, lattice rows, total energy, forces) as Atoms."""
    structures = []
    for index, record in enumerate(json.loads(path.read_text())):
        atoms = ase.Atoms(
            record["elements"],
            scaled_positions=np.asarray(record["coords"]["data"]),
            cell=np.asarray(record["lattice"]["data"]),
            pbc=True,
        )
        atoms.info["REF_energy"] = float(record["energy"])
        atoms.arrays["REF_forces"] = np.asarray(record["force"], dtype=float).reshape(-1, 3)
        atoms.info["source_index"] = index
        structures.append(atoms)
    return structures


def min_distance(atoms: ase.Atoms, probe_radius: float = 3.0) -> float:
    distances = neighbor_list("d", atoms, probe_radius)
    return float(distances.min()) if len(distances) else probe_radius


def filter_structures(structures: list[ase.Atoms]) -> tuple[list[ase.Atoms], dict]:
    energy_per_atom = np.array([a.info["REF_energy"] / len(a) for a in structures])
    lowest = float(energy_per_atom.min())
    seen: set[bytes] = set()
    kept, dropped = [], {"duplicate": 0, "high_energy": 0, "compressed": 0}
    for atoms, e in zip(structures, energy_per_atom):
        key = np.round(np.concatenate([atoms.cell.array.ravel(), atoms.positions.ravel(),
                                       [atoms.info["REF_energy"]]]), 5).tobytes()
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        if e - lowest > MAX_EXCESS_EV_PER_ATOM:
            dropped["high_energy"] += 1
            continue
        if min_distance(atoms) < MIN_DISTANCE_A:
            dropped["compressed"] += 1
            continue
        atoms.info["excess_energy_per_atom"] = float(e - lowest)
        kept.append(atoms)
    return kept, {"lowest_energy_per_atom": lowest, "kept": len(kept), "dropped": dropped}


def split_structures(structures: list[ase.Atoms]) -> dict[str, list[ase.Atoms]]:
    rng = np.random.default_rng(SPLIT_SEED)
    excess = np.array([a.info["excess_energy_per_atom"] for a in structures])
    low = rng.permutation(np.flatnonzero(excess < LOW_ENERGY_EV_PER_ATOM))
    if len(low) < N_MLIP_TRAIN + N_MLIP_VALID:
        raise ValueError(f"only {len(low)} low-energy cells for the MLIP split")
    train = low[:N_MLIP_TRAIN]
    valid = low[N_MLIP_TRAIN : N_MLIP_TRAIN + N_MLIP_VALID]
    rest = rng.permutation(np.setdiff1d(np.arange(len(structures)), np.concatenate([train, valid])))
    half = len(rest) // 2
    picks = {"mlip_train": train, "mlip_valid": valid, "probe_train": rest[:half], "test": rest[half:]}
    return {name: [structures[i] for i in sorted(idx)] for name, idx in picks.items()}


def shifted(paths: dict[str, Path], excess_ev_per_atom: float = SHIFT_EV_PER_ATOM) -> dict[str, Path]:
    """The same splits, but PROBE trains only below `excess_ev_per_atom` and is tested only
    above it: does PROBE itself extrapolate to higher-energy cells than it was trained on?"""
    out = dict(paths)
    for name, keep_high in (("probe_train", False), ("test", True)):
        target = paths[name].with_name(f"{name}_shifted.extxyz")
        if not target.is_file():
            structures = [a for a in ase.io.read(paths[name], ":")
                          if (a.info["excess_energy_per_atom"] >= excess_ev_per_atom) == keep_high]
            tmp = target.with_suffix(".tmp.extxyz")
            ase.io.write(tmp, structures, format="extxyz")
            tmp.replace(target)
        out[name] = target
    return out


def prepare(work_dir: Path) -> dict[str, Path]:
    """Fetch, filter and split once; returns the extxyz file of each split."""
    data_dir = work_dir / "data"
    paths = {name: data_dir / f"{name}.extxyz" for name in SPLITS}
    summary_path = data_dir / "summary.json"
    if summary_path.is_file() and all(p.is_file() for p in paths.values()):
        return paths
    structures = read_si_json(fetch_si_json(work_dir / "cache"))
    kept, summary = filter_structures(structures)
    summary["n_source"] = len(structures)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, split in split_structures(kept).items():
        tmp = paths[name].with_suffix(".tmp.extxyz")
        ase.io.write(tmp, split, format="extxyz")
        tmp.replace(paths[name])
        excess = np.array([a.info["excess_energy_per_atom"] for a in split])
        summary[name] = {"n": len(split), "excess_ev_per_atom_median": float(np.median(excess)),
                         "excess_ev_per_atom_max": float(excess.max())}
    summary["rules"] = {
        "max_excess_ev_per_atom": MAX_EXCESS_EV_PER_ATOM, "min_distance_a": MIN_DISTANCE_A,
        "low_energy_ev_per_atom": LOW_ENERGY_EV_PER_ATOM, "n_mlip_train": N_MLIP_TRAIN,
        "n_mlip_valid": N_MLIP_VALID, "split_seed": SPLIT_SEED,
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return paths
