"""Post-hoc calibration of the head's logit: temperature scaling with a bias term, and
recalibration on a user's own frames (temperature + bias or isotonic, chosen by held-out NLL,
next to any candidate the caller adds, e.g. probe_md.error_recalibration's).

The bias is needed because the head is trained with a class-balanced loss, which shifts
its logits by the log prior ratio; temperature alone cannot undo a shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from scipy.optimize import isotonic_regression


def fit_temperature_and_bias(
    logits: torch.Tensor, is_reliable: torch.Tensor, max_iter: int = 200, prior: bool = False
) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of sigmoid((logit + bias) / temperature).

    prior: maximum a posteriori, with the map the logits already have (T = 1, bias 0) as the
    prior's mean: log T ~ N(0, 1), bias ~ N(0, 2^2). It weighs as much as one frame's NLL, so
    it is felt only on a few frames. On a few frames that the logit happens to separate, the
    plain fit drives the temperature towards 0: a map that says 0 or 1 everywhere (8 frames did
    that to a retraining round's head: AUROC 0.968 -> 0.937, ECE 0.040 -> 0.118 on the
    default's test set)."""
    logits = logits.detach().double()
    targets = is_reliable.detach().double()
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    prior_weight = 1.0 / len(targets) if prior else 0.0
    optimizer = torch.optim.LBFGS([log_temperature, bias], lr=0.1, max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            (logits + bias) / torch.exp(log_temperature), targets
        )
        loss = loss + prior_weight * (log_temperature**2 / 2 + (bias / 2) ** 2 / 2)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_temperature.detach()))
    if not (0.01 < temperature < 100.0):
        # A degenerate calibration split (one class, separable) runs away: keep identity.
        return 1.0, 0.0
    return temperature, float(bias.detach())


# ----------------------------------------------------------------------------- recalibration
# Isotonic needs enough frames of both classes to beat two parameters out of sample; below
# this many the choice is temperature + bias without trying it.
MIN_FRAMES_FOR_ISOTONIC = 40
CALIBRATION_FOLDS = 5
# Below this many frames a refitted map (and the interval's conformal offset) is mostly noise:
# the head's own calibration is the better guess.
MIN_FRAMES_FOR_RECALIBRATION = 20


def check_enough_frames(n_frames: int) -> None:
    """One line when there are too few labelled frames to recalibrate on."""
    if n_frames < MIN_FRAMES_FOR_RECALIBRATION:
        raise ValueError(
            f"recalibration needs at least {MIN_FRAMES_FOR_RECALIBRATION} labelled frames, got {n_frames}: "
            "label more frames of this regime (the head keeps its own calibration)"
        )


@dataclass(frozen=True)
class LogitMap:
    """A monotone map of a logit: (logit + bias) / temperature, then the knots if any."""

    kind: str  # "temperature" or "isotonic"
    temperature: float = 1.0
    bias: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def apply(self, logits: np.ndarray) -> np.ndarray:
        mapped = (np.asarray(logits, dtype=float) + self.bias) / self.temperature
        if len(self.knots_x) > 1:
            mapped = np.interp(mapped, self.knots_x, self.knots_y)  # constant beyond the ends
        return mapped


def fit_isotonic(logits: np.ndarray, is_reliable: np.ndarray) -> LogitMap:
    """Isotonic regression of the label on the logit, as knots (block centres, logit of the
    block's reliable fraction) joined linearly; a block that is all one class gets
    (k + 1/2) / (n + 1) instead of 0 or 1.

    Unsmoothed, such blocks (the ends) are exactly 0 or 1: one held-out frame there costs an
    unbounded NLL, so the NLL comparison with temperature + bias was lost on ~100 frames even
    where isotonic calibrated better (benchmarks/quality/calibrate_split.py)."""
    order = np.argsort(logits, kind="stable")
    x, y = np.asarray(logits, float)[order], np.asarray(is_reliable, float)[order]
    fitted = isotonic_regression(y).x
    starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
    ends = np.r_[starts[1:], len(x)]
    centres = np.array([x[a:b].mean() for a, b in zip(starts, ends)])
    counts = ends - starts
    fractions = fitted[starts]
    pure = (fractions == 0) | (fractions == 1)
    fractions = np.where(pure, (fractions * counts + 0.5) / (counts + 1), fractions)
    fractions = np.maximum.accumulate(fractions)  # a smoothed end may pass its neighbour
    return LogitMap("isotonic", knots_x=tuple(centres), knots_y=tuple(np.log(fractions / (1 - fractions))))


def fit_logit_map(kind: str, logits: np.ndarray, is_reliable: np.ndarray) -> LogitMap:
    if kind == "isotonic":
        return fit_isotonic(logits, is_reliable)
    temperature, bias = fit_temperature_and_bias(torch.as_tensor(logits), torch.as_tensor(is_reliable),
                                                 prior=True)
    return LogitMap("temperature", temperature, bias)


def binary_nll(logits: np.ndarray, is_reliable: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels under sigmoid(logits)."""
    logits = np.asarray(logits, float)
    signed = np.where(np.asarray(is_reliable, bool), logits, -logits)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def stratified_folds(is_reliable: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index [G] of each frame, each class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(is_reliable), dtype=int)
    for label in (True, False):
        members = rng.permutation(np.flatnonzero(is_reliable == label))
        fold_of[members] = np.arange(len(members)) % folds
    return fold_of


# A calibration candidate that is not a map of the base logit (e.g. error_recalibration's):
# given the rows it may fit on, returns the function from rows to their calibrated logits.
RowFitter = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]


def out_of_fold_rows(fitter: RowFitter, fold_of: np.ndarray) -> np.ndarray:
    """Each frame's logit from `fitter` fitted on the other folds."""
    mapped = np.empty(len(fold_of))
    for fold in np.unique(fold_of):
        held_out = fold_of == fold
        mapped[held_out] = fitter(np.flatnonzero(~held_out))(np.flatnonzero(held_out))
    return mapped


def out_of_fold_logits(kind: str, logits: np.ndarray, is_reliable: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each frame's logit mapped by a map fitted on the other folds (stratified by class)."""
    def fitter(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        fitted = fit_logit_map(kind, logits[rows], is_reliable[rows])
        return lambda held_out: fitted.apply(logits[held_out])

    return out_of_fold_rows(fitter, stratified_folds(is_reliable, folds, seed))


@dataclass(frozen=True)
class CalibrationChoice:
    """The winner fitted on all frames, how each kind did out of sample, and its out-of-fold logits."""

    kind: str
    chosen: LogitMap | None  # the map of the base logit; None when an extra candidate won (its owner fits it)
    held_out_nll: dict[str, float]
    out_of_fold_logits: np.ndarray  # of the chosen kind: each frame mapped without seeing it


def choose_logit_map(logits: np.ndarray, is_reliable: np.ndarray, folds: int = CALIBRATION_FOLDS,
                     extra: Mapping[str, RowFitter] | None = None, preferred: str | None = None) -> CalibrationChoice:
    """Temperature + bias, isotonic when there are enough frames, and any `extra` candidates,
    every one scored on the same folds: the lowest held-out NLL, or `preferred` (an extra
    candidate its owner has measured to be the better choice; still scored and reported)."""
    logits, is_reliable = np.asarray(logits, float), np.asarray(is_reliable, bool)
    folds = min(folds, int(is_reliable.sum()), int((~is_reliable).sum()))
    if folds < 2:
        raise ValueError("recalibration needs at least 2 reliable and 2 unreliable frames")
    check_enough_frames(len(logits))
    kinds = ["temperature"] + (["isotonic"] if len(logits) >= MIN_FRAMES_FOR_ISOTONIC else [])
    out_of_fold = {kind: out_of_fold_logits(kind, logits, is_reliable, folds) for kind in kinds}
    fold_of = stratified_folds(is_reliable, folds)
    out_of_fold.update({kind: out_of_fold_rows(fitter, fold_of) for kind, fitter in (extra or {}).items()})
    nll = {kind: binary_nll(mapped, is_reliable) for kind, mapped in out_of_fold.items()}
    best = preferred if preferred is not None else min(nll, key=nll.get)
    chosen = fit_logit_map(best, logits, is_reliable) if best in kinds else None
    return CalibrationChoice(best, chosen, nll, out_of_fold[best])
