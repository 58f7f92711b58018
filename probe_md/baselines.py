"""Baseline unreliability scores that PROBE is compared against.

- Ensemble disagreement: spread of energies/forces across K independently trained MLIPs.
- Feature density: per-atom Mahalanobis distance of the frozen backbone features to the
  training distribution (the same features PROBE reads, without any learned head).
Every score is higher = more likely unreliable, ready for metrics.summarize_scores.
"""

from __future__ import annotations

from typing import Final, Sequence

import numpy as np
import torch

from probe_md.backbone.base import StructurePrediction
from probe_md.estimator import check_is_fitted

# Keys of ensemble_disagreement(); each value is a float64 array of shape [n_structures].
ENERGY_STD_PER_ATOM: Final[str] = "energy_std_per_atom"  # eV/atom, std over members of E / n_atoms
FORCE_STD_MEAN: Final[str] = "force_std_mean"  # eV/Å, mean over atoms of sqrt(sum_xyz var)
FORCE_STD_MAX: Final[str] = "force_std_max"  # eV/Å, max over atoms of sqrt(sum_xyz var)

_AGGREGATES: Final[tuple[str, ...]] = ("max", "mean")
_STATE_VERSION: Final[int] = 1


def ensemble_disagreement(
    member_predictions: Sequence[Sequence[StructurePrediction]],
) -> dict[str, np.ndarray]:
    """Per-structure spread of K ensemble members' predictions (population std, ddof=0).

    member_predictions[k][i] is member k's prediction of structure i; every member must
    predict the same structures in the same order.
    """
    num_members = len(member_predictions)
    if num_members < 2:
        raise ValueError(f"ensemble_disagreement needs at least 2 members, got {num_members}")
    num_structures = len(member_predictions[0])
    if num_structures == 0:
        raise ValueError("ensemble_disagreement got members with no structures")
    for k, predictions in enumerate(member_predictions):
        if len(predictions) != num_structures:
            raise ValueError(
                f"member {k} predicted {len(predictions)} structures, member 0 predicted "
                f"{num_structures}; pass every member the same structures in the same order"
            )

    energy_std = np.empty(num_structures)
    force_std_mean = np.empty(num_structures)
    force_std_max = np.empty(num_structures)
    for i in range(num_structures):
        forces = [np.asarray(member[i].forces, dtype=np.float64) for member in member_predictions]
        num_atoms = forces[0].shape[0]
        if num_atoms == 0:
            raise ValueError(f"structure {i} has no atoms; drop empty structures before scoring")
        for k, member_forces in enumerate(forces):
            if member_forces.shape != (num_atoms, 3):
                raise ValueError(
                    f"structure {i}: member {k} forces have shape {member_forces.shape}, member 0 "
                    f"has ({num_atoms}, 3); members must predict the same structures in the same order"
                )
        energies_per_atom = np.array([member[i].energy for member in member_predictions]) / num_atoms
        energy_std[i] = energies_per_atom.std()
        # per atom: sqrt of the summed variance of the 3 components across members
        atom_force_std = np.sqrt(np.stack(forces).var(axis=0).sum(axis=-1))  # [n_atoms]
        force_std_mean[i] = atom_force_std.mean()
        force_std_max[i] = atom_force_std.max()
    return {
        ENERGY_STD_PER_ATOM: energy_std,
        FORCE_STD_MEAN: force_std_mean,
        FORCE_STD_MAX: force_std_max,
    }


def _ledoit_wolf_shrinkage(sum_cov: np.ndarray, sum_sq_outer: np.ndarray, num_samples: int) -> float:
    """Ledoit–Wolf (2004) shrinkage towards mu*I, from centred sufficient statistics.

    sum_cov = sum_n x_n x_n^T and sum_sq_outer = sum_n (x_n^2)(x_n^2)^T over centred x_n;
    the formula is sklearn's ledoit_wolf_shrinkage, written so it can be accumulated
    structure by structure instead of stacking every atom in memory.
    """
    num_features = sum_cov.shape[0]
    emp_cov = sum_cov / num_samples
    mu = np.trace(emp_cov) / num_features
    delta_ = np.sum(sum_cov**2) / num_samples**2  # ||S||_F^2
    beta = (sum_sq_outer.sum() / num_samples - delta_) / (num_features * num_samples)
    delta = (delta_ - 2 * mu * np.trace(emp_cov) + num_features * mu**2) / num_features
    beta = min(beta, delta)
    return 0.0 if beta <= 0 else float(beta / delta)


class FeatureDensity:
    """Per-atom Mahalanobis distance to the training features; max or mean per structure.

    The covariance is shrunk towards (trace/F) * I, with the Ledoit–Wolf optimal intensity
    when `shrinkage` is None or a fixed intensity in [0, 1] otherwise, so that it stays
    invertible with fewer atoms than feature dimensions.
    """

    def __init__(self, aggregate: str = "max", shrinkage: float | None = None) -> None:
        self.aggregate = aggregate
        self.shrinkage = shrinkage

    def _check_params(self) -> None:
        if self.aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {self.aggregate!r}")
        if self.shrinkage is not None and not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be None (Ledoit–Wolf) or in [0, 1], got {self.shrinkage}")

    @staticmethod
    def _as_feature_blocks(features_per_structure, num_features: int | None) -> list[np.ndarray]:
        blocks = [np.asarray(features, dtype=np.float64) for features in features_per_structure]
        if not blocks:
            raise ValueError("features_per_structure is empty; pass at least one structure")
        expected = blocks[0].shape[-1] if num_features is None else num_features
        for i, block in enumerate(blocks):
            if block.ndim != 2 or block.shape[1] != expected or block.shape[0] == 0:
                raise ValueError(
                    f"features_per_structure[{i}] has shape {block.shape}; "
                    f"expected (n_atoms >= 1, {expected})"
                )
            if not np.all(np.isfinite(block)):
                raise ValueError(f"features_per_structure[{i}] contains nan or inf")
        return blocks

    def fit(self, features_per_structure: Sequence[np.ndarray]) -> FeatureDensity:
        """Learn the mean and shrunk covariance of all training atoms' features."""
        self._check_params()
        blocks = self._as_feature_blocks(features_per_structure, None)
        num_features = blocks[0].shape[1]
        num_atoms = sum(block.shape[0] for block in blocks)
        if num_atoms < 2:
            raise ValueError(f"FeatureDensity.fit needs at least 2 atoms in total, got {num_atoms}")

        # two passes over the structures: mean first, then centred second moments
        mean = sum(block.sum(axis=0) for block in blocks) / num_atoms
        sum_cov = np.zeros((num_features, num_features))
        sum_sq_outer = np.zeros((num_features, num_features))
        for block in blocks:
            centred = block - mean
            sum_cov += centred.T @ centred
            if self.shrinkage is None:
                squared = centred**2
                sum_sq_outer += squared.T @ squared

        emp_cov = sum_cov / num_atoms
        shrinkage = (
            _ledoit_wolf_shrinkage(sum_cov, sum_sq_outer, num_atoms)
            if self.shrinkage is None
            else float(self.shrinkage)
        )
        mu = np.trace(emp_cov) / num_features
        covariance = (1 - shrinkage) * emp_cov + shrinkage * mu * np.eye(num_features)
        # a tiny relative jitter keeps degenerate inputs (constant features, shrinkage 0) invertible
        jitter = 1e-10 * max(mu, np.finfo(np.float64).tiny)
        covariance[np.diag_indices_from(covariance)] += jitter
        precision = np.linalg.inv(covariance)

        self.mean_ = mean
        self.covariance_ = covariance
        self.precision_ = 0.5 * (precision + precision.T)
        self.shrinkage_ = shrinkage
        self.n_features_in_ = num_features
        self.n_atoms_fit_ = num_atoms
        return self

    def atom_distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each atom's features to the training mean, [n_atoms]."""
        check_is_fitted(self, "precision_")
        (block,) = self._as_feature_blocks([features], self.n_features_in_)
        centred = block - self.mean_
        squared = np.einsum("nf,fg,ng->n", centred, self.precision_, centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def score(self, features_per_structure: Sequence[np.ndarray]) -> np.ndarray:
        """Per-structure out-of-distribution score (higher = further from training)."""
        check_is_fitted(self, "precision_")
        self._check_params()
        blocks = self._as_feature_blocks(features_per_structure, self.n_features_in_)
        reduce = np.max if self.aggregate == "max" else np.mean
        return np.array([reduce(self.atom_distances(block)) for block in blocks])

    def state_dict(self) -> dict:
        """Config and learned state as plain tensors/ints/strs (torch.load(weights_only=True)-safe)."""
        check_is_fitted(self, "precision_")
        return {
            "version": _STATE_VERSION,
            "aggregate": self.aggregate,
            "shrinkage": self.shrinkage,
            "mean": torch.from_numpy(self.mean_.copy()),
            "covariance": torch.from_numpy(self.covariance_.copy()),
            "precision": torch.from_numpy(self.precision_.copy()),
            "shrinkage_fitted": self.shrinkage_,
            "n_atoms_fit": self.n_atoms_fit_,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> FeatureDensity:
        """Rebuild a fitted FeatureDensity from state_dict()'s output."""
        expected_keys = {
            "version", "aggregate", "shrinkage", "mean", "covariance", "precision",
            "shrinkage_fitted", "n_atoms_fit",
        }  # fmt: skip
        missing = expected_keys - set(state)
        if missing:
            raise ValueError(f"FeatureDensity state is missing {sorted(missing)}; save it with state_dict()")
        if state["version"] != _STATE_VERSION:
            raise ValueError(
                f"FeatureDensity state has version {state['version']}, this code reads {_STATE_VERSION}"
            )
        density = cls(aggregate=state["aggregate"], shrinkage=state["shrinkage"])
        density._check_params()
        mean = torch.as_tensor(state["mean"]).double().numpy()
        num_features = mean.shape[0]
        for key in ("covariance", "precision"):
            if tuple(state[key].shape) != (num_features, num_features):
                raise ValueError(
                    f"FeatureDensity state field {key!r} has shape {tuple(state[key].shape)}, "
                    f"expected ({num_features}, {num_features}) to match 'mean'"
                )
        density.mean_ = mean
        density.covariance_ = torch.as_tensor(state["covariance"]).double().numpy()
        density.precision_ = torch.as_tensor(state["precision"]).double().numpy()
        density.shrinkage_ = float(state["shrinkage_fitted"])
        density.n_features_in_ = num_features
        density.n_atoms_fit_ = int(state["n_atoms_fit"])
        return density
