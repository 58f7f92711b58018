"""Contract checks every backbone must pass (applied to each adapter's tiny model)."""

from __future__ import annotations

import numpy as np

from probe_md.backbone import Backbone


def check_batching_and_forces(backbone: Backbone, structures, tol: float, fd_step: float, fd_tol) -> None:
    """Batched = single prediction, and forces = -dE/dx by central differences."""
    assert isinstance(backbone, Backbone)
    batched = backbone.predict(structures)
    single = backbone.predict(structures[-1:])[0]
    assert abs(batched[-1].energy - single.energy) < tol
    np.testing.assert_allclose(batched[-1].forces, single.forces, atol=tol)
    np.testing.assert_allclose(batched[-1].features, single.features, atol=tol)
    assert batched[0].features.shape == (len(structures[0]), backbone.feature_dim)
    atoms = structures[0].copy()
    atoms.positions[0, 0] += fd_step
    e_plus = backbone.predict([atoms])[0].energy
    atoms.positions[0, 0] -= 2 * fd_step
    e_minus = backbone.predict([atoms])[0].energy
    force = batched[0].forces[0, 0]
    assert abs(-(e_plus - e_minus) / (2 * fd_step) - force) < fd_tol(force)


def check_invariances(backbone: Backbone, atoms, tol: float) -> None:
    """Features invariant to rotation and translation, and permuted with the atoms."""
    moved = atoms.copy()
    moved.rotate(37, "x", rotate_cell=True)
    moved.rotate(11, "z", rotate_cell=True)
    moved.translate([0.3, -1.2, 2.0])
    order = np.random.default_rng(0).permutation(len(atoms))
    base, rot, perm = backbone.predict([atoms, moved, atoms[order]])
    np.testing.assert_allclose(rot.features, base.features, atol=tol)
    np.testing.assert_allclose(perm.features, base.features[order], atol=tol)
    assert abs(rot.energy - base.energy) < tol * max(1.0, abs(base.energy))
