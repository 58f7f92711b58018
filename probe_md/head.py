"""The PROBE head: per-atom MLP -> multi-head attention pooling -> MLP -> one logit.

The pooling is written as partial sums (per-head max, sum of exp, sum of exp * value) so
that any partition of a structure's atoms (batches here, MPI ranks in LAMMPS) can be
pooled separately and merged exactly: that is what makes the score rank-count invariant.
A positive logit means "the MLIP prediction is reliable".

Two more readouts share the pooled vector: an optional monotone piecewise-linear map of the
calibrated logit (isotonic recalibration, `probe-md calibrate`), and the predicted error:
quantiles 10/50/90 % of log(error) in the criterion's units, the interval widened by a
conformal offset so that it covers 80 % of held-out structures.

A head trained with errors takes its reliability logit from the predicted error: the margin of
the median below the threshold in units of the predicted spread, whose width shrinks with the
atom count. That ranks and calibrates better at the onset of unreliability than the classifier
readout (docs/notes/logit_from_error.md); the classifier readout stays the logit of heads
trained on labels alone and of older files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn


@dataclass
class HeadConfig:
    """Hyper-parameters of the head; saved with its weights."""

    feature_dim: int
    hidden_dim: int = 64
    num_heads: int = 4
    value_dim: int = 16
    readout_hidden_dim: int = 32
    dropout: float = 0.1
    # True: the last input column is the MLIP's own per-atom force norm (`force_norm_column`),
    # after the backbone's feature_dim - 1 columns. Older files lack the key: False.
    reads_force_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def backbone_feature_dim(self) -> int:
        """How many per-atom features the head wants from the backbone."""
        return self.feature_dim - int(self.reads_force_norm)


# The force norm is read as log(|F| + this), eV/Å: finite where a force vanishes by symmetry.
FORCE_NORM_OFFSET = 1e-3


def force_norm_column(forces: torch.Tensor, offset: float = FORCE_NORM_OFFSET) -> torch.Tensor:
    """[N, 1] log(|F_i| + offset) of the MLIP's per-atom forces [N, 3] (eV/Å).

    Why the head reads it: a force error cannot exceed what the local environment lets the
    force be, and it vanishes with the force at symmetric sites; the MLIP's own force tells the
    head that directly, where invariant node features (L=0 channels) cannot
    (docs/notes/force_norm_input.md)."""
    return torch.log(torch.linalg.vector_norm(forces, dim=1, keepdim=True) + offset)


class PartialPool(NamedTuple):
    """Attention pooling state of a subset of atoms, per structure and head.

    max_score: [G, H] running max of attention logits (-inf where a structure has no atoms)
    sum_exp: [G, H] sum of exp(score - max_score)
    weighted_values: [G, H, D] sum of exp(score - max_score) * value
    """

    max_score: torch.Tensor
    sum_exp: torch.Tensor
    weighted_values: torch.Tensor


def partial_pool(
    scores: torch.Tensor, values: torch.Tensor, batch: torch.Tensor, num_graphs: int
) -> PartialPool:
    """Partial sums of softmax pooling for the atoms given (scores [N,H], values [N,H,D])."""
    num_heads = scores.shape[1]
    index = batch.unsqueeze(1).expand(-1, num_heads)
    max_score = torch.full(
        (num_graphs, num_heads), float("-inf"), dtype=scores.dtype, device=scores.device
    )
    max_score = max_score.scatter_reduce(0, index, scores, reduce="amax", include_self=True)
    # Subtracting the per-structure max keeps exp() finite for any logit scale.
    weights = torch.exp(scores - max_score[batch])
    sum_exp = torch.zeros_like(max_score).index_add(0, batch, weights)
    weighted_values = torch.zeros(
        (num_graphs, num_heads, values.shape[2]), dtype=values.dtype, device=values.device
    ).index_add(0, batch, weights.unsqueeze(-1) * values)
    return PartialPool(max_score, sum_exp, weighted_values)


def merge_partial_pools(a: PartialPool, b: PartialPool) -> PartialPool:
    """Exact merge of two partial pools (the MPI version is max- then sum-allreduce)."""
    new_max = torch.maximum(a.max_score, b.max_score)
    # A structure with no atoms in one part has max=-inf there: its scale must be 0, not nan.
    scale_a = torch.where(
        torch.isinf(a.max_score), torch.zeros_like(new_max), torch.exp(a.max_score - new_max)
    )
    scale_b = torch.where(
        torch.isinf(b.max_score), torch.zeros_like(new_max), torch.exp(b.max_score - new_max)
    )
    return PartialPool(
        new_max,
        a.sum_exp * scale_a + b.sum_exp * scale_b,
        a.weighted_values * scale_a.unsqueeze(-1) + b.weighted_values * scale_b.unsqueeze(-1),
    )


def finish_pool(pool: PartialPool) -> torch.Tensor:
    """Pooled vectors [G, H*D] from complete partial sums."""
    pooled = pool.weighted_values / pool.sum_exp.unsqueeze(-1)
    return pooled.reshape(pooled.shape[0], -1)


def piecewise_linear(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Interpolate y(x) through increasing knots; constant beyond the end knots."""
    x_clamped = torch.clamp(x, knots_x[0], knots_x[-1])
    right = torch.clamp(torch.searchsorted(knots_x, x_clamped.contiguous()), 1, knots_x.shape[0] - 1)
    x0, x1 = knots_x[right - 1], knots_x[right]
    y0, y1 = knots_y[right - 1], knots_y[right]
    fraction = (x_clamped - x0) / torch.clamp(x1 - x0, min=1e-12)
    return y0 + fraction * (y1 - y0)


# The predicted-error readout's quantile levels (lower, median, upper): an 80 % interval.
ERROR_QUANTILES = (0.1, 0.5, 0.9)
# The interval's width scales as (atoms / this)^-exponent, the exponent learned: a force RMSE
# averages over more atoms in a bigger cell, and the pooled vector (an average) cannot know N.
ERROR_WIDTH_REFERENCE_ATOMS = 64.0
# The 90 % quantile of a standard normal: the 10-90 % half-width of a normal spread in sigmas.
NORMAL_Z90 = 1.2815515655446004


class HeadOutput(NamedTuple):
    logits: torch.Tensor  # [G] calibrated (divided by the temperature)
    attention: torch.Tensor  # [N, H] softmax weights over each structure's atoms
    pooled: torch.Tensor  # [G, H*D] what the readouts read (see `readout_error`)
    atom_counts: torch.Tensor  # [G] atoms per structure (float), the error interval's width


class ProbeHead(nn.Module):
    """Reliability classifier over frozen per-atom features."""

    __jit_ignored_attributes__ = ["config"]

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        # Plain ints so the module scripts (TorchScript cannot hold the dataclass).
        self.num_heads: int = config.num_heads
        self.value_dim: int = config.value_dim
        self.reads_force_norm: bool = config.reads_force_norm
        dim = config.feature_dim
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        # Calibration: calibrated logit = (raw logit + logit_bias) / temperature. The bias undoes
        # the prior shift of the class-balanced loss; the temperature fixes over-confidence.
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("logit_bias", torch.zeros(()))
        # Optional isotonic map of the calibrated logit (no knots: off); sizes change on fit.
        self.register_buffer("calibration_knots_x", torch.zeros(0))
        self.register_buffer("calibration_knots_y", torch.zeros(0))
        # Predicted error: log-error quantiles from the pooled vector; the conformal offset
        # widens the interval in log space; error_fitted = 0 means "not trained" (old heads).
        self.register_buffer("error_fitted", torch.zeros(()))
        self.register_buffer("error_interval_offset", torch.zeros(()))
        # log of the floor under the errors the readout was trained on (-inf: none, old heads)
        self.register_buffer("error_log_floor", torch.tensor(float("-inf")))
        # log of the largest error the readout was trained on (+inf: unknown, old heads). Past it
        # the readout extrapolates linearly: a 0.3 Å rattle read 1.5 keV/Å for an 18 eV/Å error.
        self.register_buffer("error_log_ceiling", torch.tensor(float("inf")))
        # The largest training cell (+inf: unknown, old heads). The interval's width stops
        # shrinking there: measured on 256-4000-atom Cu cells, the residual stays ~0.09 in log
        # from 256 atoms up while the learned size law keeps narrowing (70 % coverage, not 80).
        self.register_buffer("error_width_max_atoms", torch.tensor(float("inf")))
        # logit_from_error = 1: the raw logit is the predicted error's margin below exp(log_threshold).
        self.register_buffer("logit_from_error", torch.zeros(()))
        self.register_buffer("log_threshold", torch.zeros(()))
        self.normal_z90: float = NORMAL_Z90  # a plain float for TorchScript
        self.error_width_size_exponent = nn.Parameter(torch.zeros(()))
        self.error_width_reference_atoms: float = ERROR_WIDTH_REFERENCE_ATOMS  # a plain float for TorchScript
        self.atom_mlp = nn.Sequential(
            nn.Linear(dim, config.hidden_dim),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.SiLU(),
        )
        self.attention_score = nn.Linear(config.hidden_dim, config.num_heads)
        self.attention_value = nn.Linear(config.hidden_dim, config.num_heads * config.value_dim)
        self.readout = nn.Sequential(
            nn.Linear(config.num_heads * config.value_dim, config.readout_hidden_dim),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.readout_hidden_dim, 1),
        )
        self.error_readout = nn.Sequential(
            nn.Linear(config.num_heads * config.value_dim, config.readout_hidden_dim),
            nn.SiLU(),
            nn.Linear(config.readout_hidden_dim, 3),
        )

    def set_feature_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with statistics of the training features."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.clamp(std, min=1e-6))

    @torch.jit.export
    def inputs(self, backbone_features: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
        """The head's per-atom input [N, feature_dim] from the backbone's features and the
        MLIP's forces [N, 3] on the same atoms (read only by heads with reads_force_norm)."""
        if self.reads_force_norm:
            return torch.cat([backbone_features, force_norm_column(forces.to(backbone_features.dtype))], dim=1)
        return backbone_features

    def atom_terms(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom attention logits [N, H] and values [N, H, D]."""
        hidden = self.atom_mlp((features - self.feature_mean) / self.feature_std)
        scores = self.attention_score(hidden)
        values = self.attention_value(hidden).reshape(
            features.shape[0], self.num_heads, self.value_dim
        )
        return scores, values

    def readout_logit(self, pooled: torch.Tensor, atom_counts: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """Logit [G] from pooled vectors [G, H*D] of structures with `atom_counts` [G] atoms."""
        if float(self.logit_from_error) > 0.5:
            logit = self.error_margin(pooled, atom_counts)
        else:
            logit = self.readout(pooled).squeeze(-1)
        if not calibrated:
            return logit
        logit = (logit + self.logit_bias) / self.temperature
        if self.calibration_knots_x.shape[0] > 1:
            logit = piecewise_linear(logit, self.calibration_knots_x, self.calibration_knots_y)
        return logit

    def width_scale(self, atom_counts: torch.Tensor, for_interval: bool = True) -> torch.Tensor:
        """Factor [G] on the half-widths: (N / 64)^-exponent, a force RMSE averaging over more
        atoms; for the interval, N stops at the largest training cell (no extrapolation)."""
        counts = torch.clamp(atom_counts, max=self.error_width_max_atoms) if for_interval else atom_counts
        return torch.exp(-self.error_width_size_exponent * torch.log(counts / self.error_width_reference_atoms))

    def readout_log_error(self, pooled: torch.Tensor, atom_counts: torch.Tensor, widened: bool = True,
                          for_interval: bool = True) -> torch.Tensor:
        """log of the error quantiles [G, 3] (lower, median, upper; ordered by construction);
        the half-widths, conformal offset included, scale with the structure's atom count."""
        raw = self.error_readout(pooled)
        median = raw[:, 1]
        offset = self.error_interval_offset if widened else torch.zeros_like(self.error_interval_offset)
        scale = self.width_scale(atom_counts.to(pooled.dtype), for_interval)
        # a negative offset (the raw interval over-covered) narrows, never past the median
        lower = median - torch.clamp(nn.functional.softplus(raw[:, 0]) + offset, min=0.0) * scale
        upper = median + torch.clamp(nn.functional.softplus(raw[:, 2]) + offset, min=0.0) * scale
        return torch.stack([lower, median, upper], dim=1)

    def error_margin(self, pooled: torch.Tensor, atom_counts: torch.Tensor) -> torch.Tensor:
        """(log threshold - median log error) / sigma [G]: sigma is the predicted spread on the
        threshold's side of the median (the raw 10-90 % half-width over NORMAL_Z90). The spread
        keeps the learned size law past the largest training cell: on 256-4000-atom Cu cells that
        gave the lower NLL (0.063 against 0.078 with the interval's stop)."""
        bounds = self.readout_log_error(pooled, atom_counts, widened=False, for_interval=False)
        median = bounds[:, 1]
        below = self.log_threshold < median
        half_width = torch.where(below, median - bounds[:, 0], bounds[:, 2] - median)
        return (self.log_threshold - median) * self.normal_z90 / torch.clamp(half_width, min=1e-6)

    def readout_error(self, pooled: torch.Tensor, atom_counts: torch.Tensor) -> torch.Tensor:
        """Predicted error [G, 3]: (lower, median, upper) of the 80 % interval, criterion units;
        NaN when the head was trained without errors. Beyond the largest training error the
        lower bound and median stop at it and the upper bound is +inf (unbounded)."""
        log_bounds = self.readout_log_error(pooled, atom_counts)
        if float(self.error_fitted) < 0.5:
            return torch.full_like(log_bounds, float("nan"))
        error = torch.exp(torch.minimum(log_bounds, self.error_log_ceiling))
        # The quantiles are those of max(error, floor): a lower bound at or below the floor
        # covers every error below it, down to 0 (e.g. forces that vanish by symmetry).
        lower = torch.where(log_bounds[:, 0] <= self.error_log_floor, torch.zeros_like(error[:, 0]), error[:, 0])
        upper = torch.where(log_bounds[:, 2] > self.error_log_ceiling, torch.full_like(error[:, 2], float("inf")), error[:, 2])
        return torch.stack([lower, error[:, 1], upper], dim=1)

    def forward(
        self,
        features: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        calibrated: bool = True,
    ) -> HeadOutput:
        scores, values = self.atom_terms(features)
        pool = partial_pool(scores, values, batch, num_graphs)
        pooled = finish_pool(pool)
        atom_counts = torch.zeros(num_graphs, dtype=pooled.dtype, device=pooled.device).index_add(
            0, batch, torch.ones_like(batch, dtype=pooled.dtype))
        logits = self.readout_logit(pooled, atom_counts, calibrated=calibrated)
        attention = torch.exp(scores - pool.max_score[batch]) / pool.sum_exp[batch]
        return HeadOutput(logits, attention, pooled, atom_counts)


def atom_importance(attention: torch.Tensor) -> torch.Tensor:
    """Per-atom importance [N]: head-averaged attention times the atom count (1 = average atom).

    Expects the attention of a single structure.
    """
    return attention.mean(dim=1) * attention.shape[0]
