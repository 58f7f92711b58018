"""The backbone contract: the only thing PROBE needs from an MLIP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import ase
import numpy as np


@dataclass(frozen=True)
class StructurePrediction:
    """One structure's MLIP prediction and its frozen per-atom features."""

    energy: float  # eV
    forces: np.ndarray  # [n_atoms, 3] eV/Å
    features: np.ndarray  # [n_atoms, feature_dim], rotation/translation invariant


@runtime_checkable
class Backbone(Protocol):
    """A frozen MLIP exposing per-atom invariant features from the same forward pass."""

    species: tuple[str, ...]  # chemical symbols the model knows
    cutoff: float  # Å, one message-passing layer's radius
    num_layers: int  # message-passing layers (receptive field = num_layers * cutoff)
    feature_dim: int
    fingerprint: str  # sha256 of the weights: ties heads and caches to this exact model

    def predict(self, structures: Sequence[ase.Atoms]) -> list[StructurePrediction]:
        """Energy, forces and features for each structure (batched internally)."""
        ...
