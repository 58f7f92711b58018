"""Per-structure MLIP errors and the reliable / unreliable labels derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ase
import numpy as np

from probe_md.backbone.base import StructurePrediction
from probe_md.structures import ReferenceKeys, reference_energy, reference_forces

CRITERIA = ("force-rmse", "force-max", "energy-per-atom")
DEFAULT_CRITERION = "force-rmse"
# With no threshold given: this multiple of the MLIP's typical in-domain error (see
# `default_threshold`), i.e. "twice as wrong as the model is where it was trained".
DEFAULT_THRESHOLD_MULTIPLE = 2.0


def structure_errors(
    predictions: Sequence[StructurePrediction],
    structures: Sequence[ase.Atoms],
    criterion: str = DEFAULT_CRITERION,
    keys: ReferenceKeys = ReferenceKeys(),
) -> np.ndarray:
    """One error per structure: force RMSE (eV/Å), max atomic force error (eV/Å) or |ΔE|/atom (eV)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if len(predictions) != len(structures):
        raise ValueError(f"{len(predictions)} predictions for {len(structures)} structures")
    errors = np.empty(len(structures))
    for i, (prediction, atoms) in enumerate(zip(predictions, structures)):
        if criterion == "energy-per-atom":
            errors[i] = abs(prediction.energy - reference_energy(atoms, keys)) / len(atoms)
            continue
        delta = prediction.forces - reference_forces(atoms, keys)
        if criterion == "force-rmse":
            errors[i] = np.sqrt(np.mean(delta**2))
        else:
            errors[i] = np.max(np.linalg.norm(delta, axis=1))
    return errors


def atom_force_errors(
    predictions: Sequence[StructurePrediction],
    structures: Sequence[ase.Atoms],
    keys: ReferenceKeys = ReferenceKeys(),
) -> list[np.ndarray]:
    """Per structure: every atom's force error |F_MLIP - F_ref| [n_atoms] (eV/Å)."""
    return [np.linalg.norm(p.forces - reference_forces(a, keys), axis=1) for p, a in zip(predictions, structures)]


FORCE_CRITERIA = ("force-rmse", "force-max")


def default_threshold(
    in_domain_errors: np.ndarray, multiple: float = DEFAULT_THRESHOLD_MULTIPLE
) -> float:
    """`multiple` × the RMS of the MLIP's errors on in-domain (validation) structures."""
    in_domain_errors = np.asarray(in_domain_errors, dtype=float)
    if in_domain_errors.size == 0:
        raise ValueError("no in-domain errors to derive a default threshold from")
    return float(multiple * np.sqrt(np.mean(in_domain_errors**2)))


def check_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be a positive finite error, got {threshold}")
    return float(threshold)


@dataclass(frozen=True)
class ClassBalance:
    reliable: int
    unreliable: int

    @property
    def unreliable_fraction(self) -> float:
        return self.unreliable / max(self.reliable + self.unreliable, 1)

    def __str__(self) -> str:
        total = self.reliable + self.unreliable
        return (
            f"{self.reliable} reliable / {self.unreliable} unreliable of {total} structures "
            f"({100 * self.unreliable_fraction:.1f} % unreliable)"
        )


def label_reliable(errors: np.ndarray, threshold: float) -> np.ndarray:
    """True where the MLIP error is below the threshold."""
    return np.asarray(errors) < check_threshold(threshold)


def class_balance(is_reliable: np.ndarray) -> ClassBalance:
    is_reliable = np.asarray(is_reliable, dtype=bool)
    return ClassBalance(int(is_reliable.sum()), int((~is_reliable).sum()))
