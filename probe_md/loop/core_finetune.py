"""Fine-tune a mace-torch model where only some atoms' forces count: the cores of carved structures.

Why a loop of our own: mace-torch (0.3.16) weighs forces per *structure* only. Its
`AtomicData` asserts that `forces_weight` is a scalar and `mean_squared_error_forces` repeats
that scalar over the structure's atoms, so `mace_run_train` cannot give buffer atoms of a
carved structure (probe_md.loop.carve) weight 0. This loop keeps everything else mace's: the
python model, `config_from_atoms`/`AtomicData` and their batching, per-structure weights
(`config_type` weights; `config_energy_weight`/`config_stress_weight` in info, mace's own
mechanism, which skips the energies and stresses of carved structures), mace's energy and
stress loss terms and torch_ema. The forces term is mace's `mean_squared_error_forces`
multiplied by a per-atom weight (1 for core atoms and whole frames, 0 for buffer atoms) and
averaged over the weighted atoms, so a buffer atom's label never reaches a gradient.

Unlike mace_run_train it has no learning-rate schedule, no weight decay and no restart from
checkpoints; the model of the epoch with the lowest validation loss (with EMA weights) is kept.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Final, Iterator, Sequence

import ase
import numpy as np
import torch

from probe_md.loop.carve import ARRAY_CORE
from probe_md.structures import ReferenceKeys

ATOM_FORCE_WEIGHT: Final[str] = "atom_force_weight"  # batch attribute, [n_atoms] float: 1 core/whole, 0 buffer
GRADIENT_CLIP: Final[float] = 10.0  # mace_run_train's default --clip_grad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneSettings:
    """Hyper-parameters of one fine-tune (retrain fills them from its RetrainConfig)."""

    epochs: int
    batch_size: int
    lr: float
    energy_weight: float
    forces_weight: float
    stress_weight: float
    config_type_weights: dict[str, float]  # per-structure weights by info['config_type'], as mace's
    ema_decay: float | None = None
    seed: int = 0
    device: str = "cpu"


def atom_force_weights(atoms: ase.Atoms) -> np.ndarray:
    """[n_atoms]: 1 where the reference force is trusted (core atoms, every atom of a whole frame), else 0."""
    if ARRAY_CORE in atoms.arrays:
        return np.asarray(atoms.arrays[ARRAY_CORE], dtype=bool).astype(float)
    return np.ones(len(atoms))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def atomic_data(structures: Sequence[ase.Atoms], model, keys: ReferenceKeys, settings: FineTuneSettings) -> list:
    """mace `AtomicData` of each structure, with its per-atom force weights attached."""
    from mace.data import AtomicData, config_from_atoms
    from mace.data.utils import KeySpecification
    from mace.tools import AtomicNumberTable

    key_specification = KeySpecification(
        info_keys={"energy": keys.energy, "stress": keys.stress}, arrays_keys={"forces": keys.forces}
    )
    z_table = AtomicNumberTable([int(z) for z in model.atomic_numbers])
    cutoff = float(model.r_max)
    data = []
    for atoms in structures:
        config = config_from_atoms(atoms, key_specification, settings.config_type_weights)
        item = AtomicData.from_config(config, z_table=z_table, cutoff=cutoff)
        setattr(item, ATOM_FORCE_WEIGHT, torch.tensor(atom_force_weights(atoms), dtype=torch.get_default_dtype()))
        data.append(item)
    return data


def atom_weighted_forces_loss(batch, output) -> torch.Tensor:
    """mace's `mean_squared_error_forces` times per-atom weights, averaged over weighted atoms."""
    atoms_per_structure = batch.ptr[1:] - batch.ptr[:-1]
    structure_weight = torch.repeat_interleave(batch.weight * batch.forces_weight, atoms_per_structure)
    atom_weight = getattr(batch, ATOM_FORCE_WEIGHT)
    squared = torch.square(batch["forces"] - output["forces"]).sum(dim=-1)
    weighted_atoms = torch.clamp((atom_weight > 0).sum(), min=1)
    return (structure_weight * atom_weight * squared).sum() / (3 * weighted_atoms)


def loss(batch, output, settings: FineTuneSettings) -> torch.Tensor:
    """energy (per atom) + forces (per-atom weights) + stress, each term mace's, with mace's weights."""
    from mace.modules.loss import weighted_mean_squared_error_energy, weighted_mean_squared_stress

    total = settings.forces_weight * atom_weighted_forces_loss(batch, output)
    if settings.energy_weight > 0:
        total = total + settings.energy_weight * weighted_mean_squared_error_energy(batch, output)
    if settings.stress_weight > 0:
        total = total + settings.stress_weight * weighted_mean_squared_stress(batch, output)
    return total


def evaluate(model, data: Sequence, settings: FineTuneSettings) -> float:
    """Mean loss over the batches of `data` (forces need gradients, so no torch.no_grad)."""
    from mace.tools import torch_geometric

    losses = []
    for batch in torch_geometric.DataLoader(list(data), batch_size=settings.batch_size, shuffle=False):
        batch = batch.to(settings.device)
        output = model(batch.to_dict(), training=False, compute_force=True,
                       compute_stress=settings.stress_weight > 0)
        losses.append(float(loss(batch, output, settings).detach()))
    return float(np.mean(losses)) if losses else float("nan")


def train_epoch(model, loader, optimizer, ema, settings: FineTuneSettings) -> float:
    """One pass over the training batches; returns the mean training loss."""
    model.train()
    losses = []
    for batch in loader:
        batch = batch.to(settings.device)
        optimizer.zero_grad(set_to_none=True)
        output = model(batch.to_dict(), training=True, compute_force=True, compute_stress=settings.stress_weight > 0)
        value = loss(batch, output, settings)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRADIENT_CLIP)
        optimizer.step()
        if ema is not None:
            ema.update()
        losses.append(float(value.detach()))
    return float(np.mean(losses))


def fine_tune_atom_weighted(
    model, train: Sequence[ase.Atoms], valid: Sequence[ase.Atoms], keys: ReferenceKeys, settings: FineTuneSettings
):
    """A fine-tuned copy of the mace-torch `model` (best validation epoch; the last one without `valid`)."""
    from mace.tools import torch_geometric

    model = copy.deepcopy(model).to(settings.device)
    dtype = next(model.parameters()).dtype
    torch.manual_seed(settings.seed)
    with default_dtype(dtype):
        train_data = atomic_data(train, model, keys, settings)
        valid_data = atomic_data(valid, model, keys, settings)
        loader = torch_geometric.DataLoader(train_data, batch_size=settings.batch_size, shuffle=True,
                                            generator=torch.Generator().manual_seed(settings.seed))
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, amsgrad=True)  # mace_run_train's
        ema = None
        if settings.ema_decay is not None:
            from torch_ema import ExponentialMovingAverage

            ema = ExponentialMovingAverage(model.parameters(), decay=settings.ema_decay)
        best_loss, best_state = float("inf"), None
        for epoch in range(settings.epochs):
            train_loss = train_epoch(model, loader, optimizer, ema, settings)
            with ema.average_parameters() if ema is not None else contextlib.nullcontext():
                valid_loss = evaluate(model, valid_data, settings) if valid_data else train_loss
                if valid_loss < best_loss or best_state is None:
                    best_loss, best_state = valid_loss, copy.deepcopy(model.state_dict())
            logger.info("fine-tune epoch %d: train loss %.4g, valid loss %.4g", epoch, train_loss, valid_loss)
    model.load_state_dict(best_state)
    return model.eval()
