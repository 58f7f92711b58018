"""probe_md.loop.core_finetune: buffer atoms' forces weigh 0, carved energies are skipped, the rest is mace's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe_md.backbone.mace_factory import build_mace_model
from probe_md.loop.carve import ARRAY_CORE
from probe_md.loop.core_finetune import (
    FineTuneSettings,
    atomic_data,
    atom_weighted_forces_loss,
    default_dtype,
    fine_tune_atom_weighted,
)
from probe_md.structures import ReferenceKeys

from conftest import rattled_cu

KEYS = ReferenceKeys()
SETTINGS = FineTuneSettings(epochs=2, batch_size=2, lr=1e-2, energy_weight=1.0, forces_weight=10.0,
                            stress_weight=1.0, config_type_weights={}, ema_decay=0.9)


@pytest.fixture(scope="module")
def model():
    return build_mace_model(seed=0, num_channels=8, num_layers=1, correlation=1)


def carved_like(seed: int) -> list:
    """Labelled structures where a few atoms are core atoms and energies/stresses are carved ones."""
    structures = rattled_cu(4, seed=seed, size=1)
    for atoms in structures:
        atoms.arrays[ARRAY_CORE] = np.arange(len(atoms)) < 2
        atoms.info["config_energy_weight"] = 0.0  # what retrain writes for carved structures
        atoms.info["config_stress_weight"] = 0.0
        atoms.info[KEYS.stress] = np.zeros(6)
    return structures


def relabel(structures, which: str, seed: int):
    """Copies with new random labels on buffer atoms (and energies/stresses) or on core atoms."""
    rng = np.random.default_rng(seed)
    changed = []
    for atoms in structures:
        atoms = atoms.copy()
        mask = atoms.arrays[ARRAY_CORE] if which == "core" else ~atoms.arrays[ARRAY_CORE]
        atoms.arrays[KEYS.forces][mask] += rng.normal(0.0, 1.0, (int(mask.sum()), 3))
        if which == "buffer":
            atoms.info[KEYS.energy] += 5.0
            atoms.info[KEYS.stress] = rng.normal(0.0, 0.1, 6)
        changed.append(atoms)
    return changed


def parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_buffer_labels_leave_the_fine_tuned_model_unchanged(model):
    train, valid = carved_like(1), carved_like(2)
    tuned = parameters(fine_tune_atom_weighted(model, train, valid, KEYS, SETTINGS))
    other_buffers = parameters(fine_tune_atom_weighted(
        model, relabel(train, "buffer", 3), relabel(valid, "buffer", 4), KEYS, SETTINGS))
    for a, b in zip(tuned, other_buffers):
        assert torch.equal(a, b)
    other_cores = parameters(fine_tune_atom_weighted(model, relabel(train, "core", 3), valid, KEYS, SETTINGS))
    assert any(not torch.equal(a, b) for a, b in zip(tuned, other_cores))  # the check can fail
    assert any(not torch.equal(a, b) for a, b in zip(tuned, parameters(model)))  # it did train


def test_forces_loss_is_maces_when_every_atom_counts(model):
    from mace.modules.loss import mean_squared_error_forces
    from mace.tools import torch_geometric

    structures = rattled_cu(3, seed=5, size=1)
    with default_dtype(torch.float64):
        batch = next(iter(torch_geometric.DataLoader(atomic_data(structures, model, KEYS, SETTINGS), batch_size=3)))
        output = model(batch.to_dict(), training=False, compute_force=True)
        ours = atom_weighted_forces_loss(batch, output)
        assert torch.allclose(ours, mean_squared_error_forces(batch, output), rtol=1e-12)
