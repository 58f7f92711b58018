"""LAMMPS-style periodic images for tests: local atoms first, then every image within a cutoff."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


def periodic_images(atoms, ghost_cut: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N_all,3] of the cell's atoms and of every periodic image within `ghost_cut`
    of a local atom, and owner [N_all] (the local atom each one images)."""
    cell = atoms.cell.array
    local = atoms.positions
    heights = atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reps = [int(math.ceil(ghost_cut / h)) + 1 for h in heights]
    tree = cKDTree(local)
    positions, owner = [local], [np.arange(len(atoms))]
    for shift in np.ndindex(*(2 * r + 1 for r in reps)):
        n = np.array(shift) - np.array(reps)
        if not n.any():
            continue
        images = local + n @ cell
        keep = tree.query(images, distance_upper_bound=ghost_cut)[0] < ghost_cut
        positions.append(images[keep])
        owner.append(np.nonzero(keep)[0])
    return np.concatenate(positions), np.concatenate(owner)
