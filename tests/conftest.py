"""Shared fixtures: tiny random MACE models and small Cu data sets built on the fly."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from probe_md.backbone.mace import save_mace_model
from probe_md.backbone.mace_factory import build_mace_model


def rattled_cu(n: int, seed: int, amplitude: tuple[float, float] = (0.01, 0.25), size: int = 2):
    """Rattled, strained fcc Cu cells labelled with EMT (REF_energy / REF_forces)."""
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * rng.uniform(0.97, 1.05), cubic=True).repeat(size)
        atoms.rattle(rng.uniform(*amplitude), seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        structures.append(atoms)
    return structures


@pytest.fixture(scope="session")
def tiny_mace_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_mace.pt"
    save_mace_model(build_mace_model(seed=0), path)
    return path


@pytest.fixture(scope="session")
def tiny_member_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_member.pt"
    save_mace_model(build_mace_model(seed=1), path)
    return path


@pytest.fixture(scope="session")
def cu_structures():
    return rattled_cu(24, seed=3)


@pytest.fixture(scope="session")
def cu_extxyz(tmp_path_factory, cu_structures):
    import ase.io

    path = tmp_path_factory.mktemp("data") / "cu.extxyz"
    ase.io.write(path, cu_structures)
    return path
