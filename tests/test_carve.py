"""probe_md.loop.carve: core atoms keep their environment exactly; regions, boxes, provenance, errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.neighborlist import neighbor_list

from probe_md.lammps.monitor import ARRAY_IMPORTANCE
from probe_md.loop.carve import (
    ARRAY_CORE,
    ARRAY_FRAME_INDEX,
    INFO_CARVE_CENTRE,
    INFO_CARVE_FRAME_ATOMS,
    INFO_CARVE_REGION,
    CarveConfig,
    CarveError,
    carve_frame,
    carve_frames,
)

BUFFER = 5.0  # Å: small, so the pieces stay small; exactness must hold for any buffer


def with_importance(atoms, hot: list[int], seed: int = 0):
    """A frame whose `hot` atoms are the most important ones (in that order)."""
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=seed)
    importance = np.random.default_rng(seed).uniform(0.1, 0.9, len(atoms))
    importance[hot] = 10.0 - np.arange(len(hot))
    atoms.arrays[ARRAY_IMPORTANCE] = importance
    atoms.info.update(step=120, run="run_a", reliability=0.1)
    return atoms


def environment(atoms, index: int, radius: float, names=None) -> set:
    """{(neighbour's name, displacement rounded to 1e-6 Å)} of one atom within radius."""
    first, second, vectors = neighbor_list("ijD", atoms, radius)
    names = np.arange(len(atoms)) if names is None else names
    return {(int(names[j]), *np.round(d, 6) + 0.0) for j, d in zip(second[first == index], vectors[first == index])}


def assert_core_environments_exact(frame, pieces, radius: float) -> None:
    assert pieces, "nothing carved"
    for piece in pieces:
        names = piece.arrays[ARRAY_FRAME_INDEX]
        for local in np.flatnonzero(piece.arrays[ARRAY_CORE]):
            carved = environment(piece, local, radius, names)
            original = environment(frame, int(names[local]), radius)
            assert carved == original, f"core atom {names[local]}: environment differs"


def config(**overrides) -> CarveConfig:
    settings = dict(top_k=3, buffer=BUFFER, link=3.0, gap=4.0) | overrides
    return CarveConfig(**settings)


@pytest.mark.parametrize("periodic", [True, False])
def test_core_environment_exact_across_periodic_boundary(periodic):
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4), hot=[0, 1, 2])  # atoms at the corner
    pieces = carve_frame(frame, config(periodic=periodic))
    assert len(pieces) == 1 and pieces[0].arrays[ARRAY_CORE].sum() == 3
    assert all(pieces[0].pbc == periodic)
    assert_core_environments_exact(frame, pieces, BUFFER)


def test_core_environment_exact_in_triclinic_cell():
    frame = bulk("Cu", "fcc", a=3.61).repeat((5, 6, 7))  # the primitive fcc cell: 60 degree angles
    cell = frame.cell.array.copy()
    cell[2] += 0.3 * cell[0]  # and sheared further
    frame.set_cell(cell, scale_atoms=True)
    frame = with_importance(frame, hot=[0, 7, 209])
    pieces = carve_frame(frame, config(top_k=None, min_importance=5.0))
    assert_core_environments_exact(frame, pieces, BUFFER)


def test_core_environment_exact_when_buffer_exceeds_half_the_cell():
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), hot=[5])  # 7.2 Å cell
    (piece,) = carve_frame(frame, config(top_k=1))
    assert len(piece) > len(frame)  # periodic images of frame atoms are buffer atoms of their own
    assert_core_environments_exact(frame, [piece], BUFFER)


def test_no_image_reaches_a_core_atom_at_a_free_surface():
    frame = fcc111("Cu", size=(4, 4, 4), vacuum=6.0)  # periodic in x, y; vacuum in z
    frame.pbc = True
    top = int(np.argmax(frame.positions[:, 2]))
    frame = with_importance(frame, hot=[top])
    (piece,) = carve_frame(frame, config(top_k=1))
    assert_core_environments_exact(frame, [piece], BUFFER)


def test_separate_groups_become_regions_with_provenance():
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(5), hot=[0, 1, 250])
    pieces = carve_frame(frame, config())
    assert [p.info[INFO_CARVE_REGION] for p in pieces] == [0, 1]
    assert [int(p.arrays[ARRAY_CORE].sum()) for p in pieces] == [2, 1]
    first = pieces[0]
    np.testing.assert_allclose(first.info[INFO_CARVE_CENTRE], frame.positions[0])
    assert first.info["step"] == 120 and first.info["run"] == "run_a"
    assert first.info[INFO_CARVE_FRAME_ATOMS] == len(frame)
    assert all(len(p) < len(frame) for p in pieces)


def test_frame_without_importance_gets_one_line():
    frame = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    frame.info.update(step=7, run="run_b")
    with pytest.raises(CarveError, match=r"frame of step 7 from run_b has no per-atom importance.*without --carve"):
        carve_frames([frame], config())


def test_region_larger_than_max_atoms_gets_one_line():
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4), hot=[0])
    with pytest.raises(CarveError, match=r"region 0 \(1 core atoms\) carves to \d+ atoms, more than --max-atoms 20"):
        carve_frame(frame, config(max_atoms=20))


def test_region_wrapping_around_the_cell_is_refused():
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), hot=list(range(32)))
    with pytest.raises(CarveError, match="wraps around the periodic cell"):
        carve_frame(frame, config(top_k=None, min_importance=5.0))


def test_grown_core_holds_every_atom_near_a_picked_one_with_exact_environments():
    frame = with_importance(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4), hot=[0])  # a corner atom
    (piece,) = carve_frame(frame, config(top_k=1, core_radius=3.0))
    core = set(piece.arrays[ARRAY_FRAME_INDEX][piece.arrays[ARRAY_CORE]].tolist())
    first, second = neighbor_list("ij", frame, 3.0)
    assert core == {0, *second[first == 0].tolist()} and len(core) == 13  # itself + 12 nearest neighbours
    assert_core_environments_exact(frame, [piece], BUFFER)


def test_grown_core_is_exact_in_a_triclinic_cell():
    frame = bulk("Cu", "fcc", a=3.61).repeat((5, 6, 7))
    cell = frame.cell.array.copy()
    cell[2] += 0.3 * cell[0]
    frame.set_cell(cell, scale_atoms=True)
    frame = with_importance(frame, hot=[0, 209])
    pieces = carve_frame(frame, config(top_k=2, core_radius=3.0))
    assert all(p.arrays[ARRAY_CORE].sum() > 2 for p in pieces)
    assert_core_environments_exact(frame, pieces, BUFFER)


def test_negative_core_radius_is_refused():
    with pytest.raises(ValueError, match="--core-radius must be >= 0"):
        config(core_radius=-1.0)
