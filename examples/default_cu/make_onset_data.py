"""Cu structures at the onset of unreliability, labelled with the SNAP reference (issue #11).

The broad head pool of make_data.py jumps from near-equilibrium fcc to hot, molten, strained
and defective cells; the monitor must act in between, where the MLIP's force error crosses the
threshold (25.8 meV/Å for the default: 800 K bulk, hot vacancies). These sets fill that range:

  onset_pool.extxyz   joins head_pool to train the embedded default's head: temperature ladders
                      400-1200 K in 100 K steps for fcc bulk, vacancies, divacancies and (100)/(111)
                      slabs, fixed-cell MD at +-1-3 % strain; cells of 32-256 atoms
  onset_test.extxyz,  the onset benchmark (benchmarks/quality): 108/256-atom cells at 450-1150 K
                      (between the pool's rungs), equilibrium or +-1 % strained, with or without a
  onset_test_b.extxyz vacancy; other seeds, disjoint trajectories (150 + 300 structures)
  large_test.extxyz,  size transfer: 256-4000-atom cells at 450-1150 K, some with vacancies
  large_test_b.extxyz (one per ~128 atoms); each starts from an equilibrated seed cell repeated;
                      other seeds, disjoint runs (30 frames of 15 runs + 60 frames of 60 runs)

Usage: python examples/default_cu/make_onset_data.py [--out DIR] [--only onset_pool ...] [--scale 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import fcc100, fcc111

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_data import (  # noqa: E402  (the sibling script holds the MD and labelling machinery)
    DEFAULT_OUT,
    MDRun,
    Protocol,
    fcc_cell,
    make_split,
    run_md,
    strained,
    with_vacancies,
    write_atomic,
)
from probe_md.reference.cu_snap import cu_snap_calculator  # noqa: E402

SPLIT_SEEDS = {"onset_pool": 11, "onset_test": 12, "large_test": 13, "onset_test_b": 14, "large_test_b": 15}
POOL_LADDER_K = tuple(range(400, 1201, 100))  # 9 rungs, 100 K apart
TEST_LADDER_K = tuple(range(450, 1151, 100))  # between the pool's rungs
POOL_REPEATS = ((2, 2, 2), (3, 3, 3), (4, 4, 4))  # 32, 108, 256 atoms
TEST_REPEATS = ((3, 3, 3), (4, 4, 4))  # 108, 256 atoms
# (seed cell, times repeated): 256, 500, 864, 2048, 4000 atoms
LARGE_CELLS = (((4, 4, 4), 1), ((5, 5, 5), 1), ((3, 3, 3), 2), ((4, 4, 4), 2), ((5, 5, 5), 2))


def ladder_md(make_start, ladder_k, frames_per_run: int, barostat: bool = True, stride: int = 40) -> Protocol:
    """MD runs that walk the temperature ladder (run i at rung i mod len), a few frames each."""

    def protocol(rng: np.random.Generator, count: int) -> list[tuple[Atoms, str]]:
        out: list[tuple[Atoms, str]] = []
        run = 0
        while len(out) < count:
            md = MDRun(
                start=make_start(rng, run),
                temperature_k=float(ladder_k[run % len(ladder_k)]),
                n_frames=min(frames_per_run, count - len(out)),
                stride=stride,
                barostat=barostat,
                seed=int(rng.integers(1, 400_000_000)),
            )
            out += [(frame, f"md{run:03d}") for frame in run_md(md)]
            run += 1
        return out

    return protocol


def small_strain(rng: np.random.Generator, atoms: Atoms, low: float, high: float) -> Atoms:
    """A random symmetric strain of largest component in [low, high] (either sign)."""
    return strained(atoms, rng, high, low)


def _fcc(repeats):
    return lambda rng, i: fcc_cell(repeats[i % len(repeats)], a=3.636)


def _strained_fcc(repeats, low, high):
    return lambda rng, i: small_strain(rng, fcc_cell(repeats[i % len(repeats)], a=3.636), low, high)


def _vacancies(repeats, count):
    return lambda rng, i: with_vacancies(fcc_cell(repeats[i % len(repeats)], a=3.636), rng, count)


def _slab(rng: np.random.Generator, i: int) -> Atoms:
    build = (fcc100, fcc111)[i % 2]
    atoms = build("Cu", size=(4, 4, 6), a=3.636, vacuum=6.0, periodic=True)  # 96 atoms
    atoms.info.clear()
    return atoms


def _test_start(rng: np.random.Generator, i: int) -> Atoms:
    """108 or 256 atoms; equilibrium, +1 % or -1 % strain; every other cell with a vacancy."""
    atoms = fcc_cell(TEST_REPEATS[i % 2], a=3.636)
    scale = (1.0, 1.01, 0.99)[(i // 2) % 3]
    atoms.set_cell(atoms.cell.array * scale, scale_atoms=True)
    return with_vacancies(atoms, rng, 1) if (i // 6) % 2 else atoms


POOL_PROTOCOLS: dict[str, tuple[Protocol, float]] = {
    "onset_fcc_ladder": (ladder_md(_fcc(POOL_REPEATS), POOL_LADDER_K, 4), 200),
    "onset_strain_ladder": (ladder_md(_strained_fcc(POOL_REPEATS, 0.01, 0.03), POOL_LADDER_K, 4, barostat=False), 120),
    "onset_vacancy_ladder": (ladder_md(_vacancies(POOL_REPEATS, 1), POOL_LADDER_K, 4), 120),
    "onset_divacancy_ladder": (ladder_md(_vacancies(POOL_REPEATS, 2), POOL_LADDER_K, 4), 80),
    "onset_surface_ladder": (ladder_md(_slab, POOL_LADDER_K, 4, barostat=False), 80),
}
TEST_PROTOCOLS: dict[str, tuple[Protocol, float]] = {
    "onset_test": (ladder_md(_test_start, TEST_LADDER_K, 3, barostat=False, stride=60), 1.0),
}


def large_md(frames_per_run: int) -> Protocol:
    """Big cells: a seed cell equilibrated at T (barostat), repeated, vacancies, short MD."""

    def protocol(rng: np.random.Generator, count: int) -> list[tuple[Atoms, str]]:
        return _large_runs(rng, count, frames_per_run)

    return protocol


def _large_runs(rng: np.random.Generator, count: int, frames_per_run: int) -> list[tuple[Atoms, str]]:
    out: list[tuple[Atoms, str]] = []
    run = 0
    while len(out) < count:
        seed_repeats, times = LARGE_CELLS[run % len(LARGE_CELLS)]
        temperature = float(TEST_LADDER_K[(run * 3) % len(TEST_LADDER_K)])
        seed = int(rng.integers(1, 400_000_000))
        seed_cell = run_md(MDRun(fcc_cell(seed_repeats, a=3.636), temperature, 1, stride=1, seed=seed))[0]
        start = seed_cell.repeat(times)
        if run % 2:
            start = with_vacancies_spread(start, rng, max(1, len(start) // 128))
        # fresh velocities and the Langevin noise decorrelate the repeated copies
        md = MDRun(start, temperature, min(frames_per_run, count - len(out)), stride=40, equilibration_steps=100, seed=seed + 1)
        out += [(frame, f"md{run:03d}_{len(start)}") for frame in run_md(md)]
        run += 1
    return out


def with_vacancies_spread(atoms: Atoms, rng: np.random.Generator, count: int) -> Atoms:
    out = atoms.copy()
    del out[sorted(rng.choice(len(out), size=count, replace=False).tolist(), reverse=True)]
    return out


LARGE_PROTOCOLS: dict[str, tuple[Protocol, float]] = {"large_test": (large_md(2), 1.0)}
# one frame per run: the two frames of a large_test run have nearly the same error
LARGE_PROTOCOLS_B: dict[str, tuple[Protocol, float]] = {"large_test": (large_md(1), 1.0)}
PLAN = {  # set name -> (protocols, structures at --scale 1)
    "onset_pool": (POOL_PROTOCOLS, 400),
    "onset_test": (TEST_PROTOCOLS, 150),
    # more of the same protocol, other seeds: 150 frames leave ECE a noise floor of ~0.07
    "onset_test_b": (TEST_PROTOCOLS, 300),
    "large_test": (LARGE_PROTOCOLS, 30),
    # 30 frames of 15 runs leave coverage and ECE a noise floor of ~0.1: 60 more runs, other seeds
    "large_test_b": (LARGE_PROTOCOLS_B, 60),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every set size (smoke run: 0.05)")
    parser.add_argument("--only", nargs="+", choices=sorted(PLAN), default=sorted(PLAN))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    calc = cu_snap_calculator()
    for name in args.only:
        protocols, total = PLAN[name]
        start = time.perf_counter()
        structures = make_split(name, protocols, max(len(protocols), round(total * args.scale)), calc,
                                split_seeds=SPLIT_SEEDS)
        write_atomic(args.out / f"{name}.extxyz", structures)
        sizes = Counter(len(s) for s in structures)
        print(f"{name}: {len(structures)} structures, {len({s.info['trajectory_id'] for s in structures})} "
              f"trajectories, sizes {dict(sorted(sizes.items()))}, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
