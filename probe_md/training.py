"""Fitting, calibrating, saving and loading a PROBE head (scikit-learn estimator habits)."""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import expit

from probe_md.calibration import fit_temperature_and_bias
from probe_md.error_prediction import (
    calibrate_error_interval,
    log_errors,
    pinball_loss,
    pooled_vectors,
    predicted_errors,
    set_training_range,
)
from probe_md.estimator import check_is_fitted
from probe_md.head import HeadConfig, ProbeHead
from probe_md.io_utils import atomic_output

logger = logging.getLogger(__name__)

HEAD_FORMAT = "probe_md.head/1"
# The classes of `fit`'s is_reliable labels, in predict_proba's column order (as scikit-learn's).
CLASSES = np.array([False, True])


@dataclass
class TrainingConfig:
    """Optimisation and data-split settings, saved with the head."""

    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_epochs: int = 300
    patience: int = 30
    batch_structures: int = 64
    validation_fraction: float = 0.15
    calibration_fraction: float = 0.15
    # with errors given: weight of the predicted-error (pinball) loss next to the classifier's;
    # 3 (not 1) because that readout gives the logit (docs/notes/logit_from_error.md)
    error_loss_weight: float = 3.0
    # with per-atom errors given: weight of the auxiliary loss that makes value channel 0 of
    # every attention head predict log(atom's force error / threshold)
    atom_error_loss_weight: float = 2.0
    seed: int = 0


@dataclass
class SplitIndices:
    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray


def split_sizes(n_structures: int, config: TrainingConfig) -> dict[str, int]:
    """How many of one class's structures go to each split."""
    n_val = int(round(config.validation_fraction * n_structures))
    n_cal = int(round(config.calibration_fraction * n_structures))
    return {"train": n_structures - n_val - n_cal, "validation": n_val, "calibration": n_cal}


def _check_split_sizes(is_reliable: np.ndarray, config: TrainingConfig) -> None:
    """Every split needs structures of both classes: say which is empty and how many are needed."""
    for label, name in ((True, "reliable"), (False, "unreliable")):
        count = int(np.sum(is_reliable == label))
        empty = [split for split, size in split_sizes(count, config).items() if size < 1]
        if empty:
            needed = next((n for n in range(1, 10_000) if min(split_sizes(n, config).values()) >= 1), None)
            fix = (f"each class needs at least {needed} structures; add labelled data or change the threshold"
                   if needed else "their sum must stay well below 1")
            raise ValueError(
                f"{count} {name} structures leave the {' and '.join(empty)} split(s) without any: with "
                f"validation/calibration fractions {config.validation_fraction}/{config.calibration_fraction} "
                f"{fix}"
            )


def stratified_split(is_reliable: np.ndarray, config: TrainingConfig) -> SplitIndices:
    """Split structures (never atoms) into train/validation/calibration, per class."""
    _check_split_sizes(is_reliable, config)
    rng = np.random.default_rng(config.seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "calibration": []}
    for label in (True, False):
        members = rng.permutation(np.flatnonzero(is_reliable == label))
        sizes = split_sizes(len(members), config)
        n_val, n_cal = sizes["validation"], sizes["calibration"]
        parts["validation"].append(members[:n_val])
        parts["calibration"].append(members[n_val : n_val + n_cal])
        parts["train"].append(members[n_val + n_cal :])
    return SplitIndices(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


@dataclass
class _Packed:
    """Many structures as one atom array with a structure index per atom."""

    features: torch.Tensor  # [N, F]
    batch: torch.Tensor  # [N]
    num_graphs: int


def pack(features: Sequence[np.ndarray], dtype=torch.float32) -> _Packed:
    counts = [len(f) for f in features]
    return _Packed(
        torch.as_tensor(np.concatenate(features), dtype=dtype),
        torch.repeat_interleave(torch.arange(len(features)), torch.tensor(counts)),
        len(features),
    )


def _scaled_head(features: Sequence[np.ndarray], train: np.ndarray, head_config: dict) -> ProbeHead:
    """A new head whose inputs are standardised with the training atoms' statistics."""
    head = ProbeHead(HeadConfig(feature_dim=features[0].shape[1], **head_config))
    train_atoms = np.concatenate([features[i] for i in train])
    head.set_feature_scaling(
        torch.as_tensor(train_atoms.mean(0), dtype=torch.float32),
        torch.as_tensor(train_atoms.std(0), dtype=torch.float32),
    )
    return head


def atom_error_loss(head: ProbeHead, packed: "_Packed", targets: torch.Tensor) -> torch.Tensor:
    """Huber loss of value channel 0 of every attention head against per-atom targets [N]."""
    _, values = head.atom_terms(packed.features)
    predicted = values[:, :, 0]
    return torch.nn.functional.huber_loss(predicted, targets.unsqueeze(1).expand_as(predicted))


def _train_with_early_stopping(
    head: ProbeHead, features: Sequence[np.ndarray], labels: torch.Tensor, split: SplitIndices, cfg: TrainingConfig,
    target_log_errors: torch.Tensor | None = None, atom_targets: Sequence[np.ndarray] | None = None,
) -> tuple[int, int, float]:
    """Fit the classifier logit on the train split (and, given log errors, the error quantiles
    from the same pooled vector; given per-atom targets, value channel 0); keeps the weights of
    the epoch with the lowest validation loss. Returns (epochs run, best epoch, best validation loss)."""
    train_labels = labels[split.train]
    # Class-balanced loss: weight the reliable class by n_unreliable / n_reliable.
    pos_weight = (1 - train_labels).sum() / train_labels.sum().clamp(min=1)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def loss_fn(out, chosen, packed) -> torch.Tensor:
        loss = bce(out.logits, labels[chosen])
        if target_log_errors is not None:
            predicted = head.readout_log_error(out.pooled, out.atom_counts, widened=False)
            loss = loss + cfg.error_loss_weight * pinball_loss(predicted, target_log_errors[chosen])
        if atom_targets is not None and cfg.atom_error_loss_weight > 0:
            targets = torch.as_tensor(np.concatenate([atom_targets[i] for i in chosen]), dtype=packed.features.dtype)
            loss = loss + cfg.atom_error_loss_weight * atom_error_loss(head, packed, targets)
        return loss

    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    validation = pack([features[i] for i in split.validation])
    rng = np.random.default_rng(cfg.seed)
    best_loss, best_state, best_epoch, epochs_run = float("inf"), None, 0, 0
    for epoch in range(cfg.max_epochs):
        head.train()
        order = rng.permutation(split.train)
        for begin in range(0, len(order), cfg.batch_structures):
            chosen = order[begin : begin + cfg.batch_structures]
            packed = pack([features[i] for i in chosen])
            loss = loss_fn(head(packed.features, packed.batch, packed.num_graphs, calibrated=False), chosen, packed)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            out = head(validation.features, validation.batch, validation.num_graphs, calibrated=False)
            val_loss = float(loss_fn(out, split.validation, validation))
        epochs_run = epoch + 1
        if val_loss < best_loss - 1e-5:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(head.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    return epochs_run, best_epoch, best_loss


def _calibrate(
    head: ProbeHead, features: Sequence[np.ndarray], labels: torch.Tensor, calibration: np.ndarray
) -> tuple[float, float]:
    """Fit and store the head's temperature and logit bias on the calibration split (of
    whichever raw logit the head reads: the classifier's or the predicted error's margin)."""
    packed = pack([features[i] for i in calibration])
    with torch.no_grad():
        logits = head(packed.features, packed.batch, packed.num_graphs, calibrated=False).logits
    temperature, bias = fit_temperature_and_bias(logits, labels[calibration])
    head.temperature.fill_(temperature)
    head.logit_bias.fill_(bias)
    return temperature, bias


def _check_fit_inputs(features, is_reliable, errors, threshold, atom_errors) -> None:
    """One line naming the first inconsistency between fit's inputs."""
    if len(features) != len(is_reliable):
        raise ValueError(f"{len(features)} feature arrays for {len(is_reliable)} labels")
    if errors is not None and len(errors) != len(features):
        raise ValueError(f"{len(features)} feature arrays for {len(errors)} errors")
    if threshold is not None and errors is not None and not np.array_equal(np.asarray(errors) < threshold, is_reliable):
        raise ValueError(f"the labels are not errors < threshold {threshold:g}")
    if atom_errors is not None:
        if threshold is None:
            raise ValueError("per-atom errors need the threshold (their target is error / threshold)")
        lengths = [len(a) for a in atom_errors]
        if lengths != [len(f) for f in features]:
            raise ValueError("per-atom errors do not match the feature arrays' atom counts")


def atom_log_error_ratios(atom_errors: Sequence[np.ndarray], threshold: float) -> list[np.ndarray]:
    """log(atom's force error / threshold), floored at 1e-3 of the threshold (an exact force
    would be -inf)."""
    return [np.log(np.maximum(np.asarray(a, float) / threshold, 1e-3)).astype(np.float32) for a in atom_errors]


class ProbeClassifier:
    """PROBE: fit a head on per-structure feature arrays and reliable/unreliable labels.

    Learned state: `head_`, `classes_` ([False, True], the is_reliable labels), `split_`,
    `training_summary_`.
    """

    def __init__(
        self,
        head_config: dict | None = None,
        training_config: TrainingConfig | None = None,
        verbose: bool = True,
    ):
        self.head_config = dict(head_config or {})
        self.training_config = training_config or TrainingConfig()
        self.verbose = verbose

    # --- fitting ---------------------------------------------------------------------
    def fit(
        self, features: Sequence[np.ndarray], is_reliable: np.ndarray, errors: np.ndarray | None = None,
        threshold: float | None = None, atom_errors: Sequence[np.ndarray] | None = None,
    ) -> "ProbeClassifier":
        """Fit the classifier; with `errors` (criterion units) also the predicted-error readout,
        and with the `threshold` that labelled them the logit is taken from that readout.
        `atom_errors` (per-atom force errors, eV/Å; needs the threshold) add the auxiliary target."""
        is_reliable = np.asarray(is_reliable, dtype=bool)
        _check_fit_inputs(features, is_reliable, errors, threshold, atom_errors)
        if is_reliable.all() or not is_reliable.any():
            raise ValueError(
                "all structures have the same label: choose a threshold that splits the data"
            )
        cfg = self.training_config
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        split = stratified_split(is_reliable, cfg)
        labels = torch.as_tensor(is_reliable, dtype=torch.float32)
        head = _scaled_head(features, split.train, self.head_config)
        target = None if errors is None else log_errors(errors, threshold)
        atom_targets = None if atom_errors is None else atom_log_error_ratios(atom_errors, threshold)
        epochs_run, best_epoch, best_loss = _train_with_early_stopping(
            head, features, labels, split, cfg, target, atom_targets)
        if errors is not None and threshold is not None:
            head.log_threshold.fill_(float(np.log(threshold)))
            head.logit_from_error.fill_(1.0)
        temperature, bias = _calibrate(head, features, labels, split.calibration)
        if errors is not None:
            set_training_range(head, np.asarray(errors)[split.train], [len(features[i]) for i in split.train], threshold)
        error_summary = {} if errors is None else calibrate_error_interval(
            head, pooled_vectors(head, [features[i] for i in split.calibration]), errors[split.calibration], threshold
        )
        self.head_ = head
        self.classes_ = CLASSES
        self.split_ = split
        self.training_summary_ = {
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "best_validation_loss": best_loss,
            "temperature": temperature,
            "logit_bias": bias,
            "train_seconds": time.perf_counter() - start,
            "n_train": int(len(split.train)),
            "n_validation": int(len(split.validation)),
            "n_calibration": int(len(split.calibration)),
            "logit_from_error": bool(head.logit_from_error > 0.5),
            **error_summary,
        }
        if self.verbose:
            logger.info(
                "head trained: %d epochs (best %d), val loss %.4f, T=%.3f, bias=%+.3f, %.1f s",
                epochs_run, best_epoch, best_loss, temperature, bias, self.training_summary_["train_seconds"],
            )
        return self

    @classmethod
    def from_head(cls, head: ProbeHead) -> "ProbeClassifier":
        classifier = cls(verbose=False)
        classifier.head_ = head.eval()
        classifier.classes_ = CLASSES
        return classifier

    # --- prediction ------------------------------------------------------------------
    def predict_logit(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated logit per structure: positive means "reliable"."""
        return self._run(features)[0]

    def predict_proba(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """[n, 2] calibrated probabilities in `classes_` order: P(unreliable), P(reliable).

        Column 1 is the probability that the structure's MLIP prediction is reliable.
        """
        logit = self.predict_logit(features)
        return np.column_stack([expit(-logit), expit(logit)])

    def predict_error(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """[n, 3] predicted error (lower, median, upper of an 80 % interval) in the criterion's
        units; NaN when the head was trained without errors."""
        check_is_fitted(self, "head_")
        return predicted_errors(self.head_, pooled_vectors(self.head_, features))

    def attention(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per structure: attention weights [n_atoms, heads] (each head sums to 1)."""
        return self._run(features)[1]

    def _run(self, features: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        check_is_fitted(self, "head_")
        head = self.head_
        dtype = head.feature_mean.dtype
        packed = pack(features, dtype=dtype)
        with torch.no_grad():
            out = head(packed.features, packed.batch, packed.num_graphs)
        counts = [len(f) for f in features]
        attention = [a.numpy() for a in torch.split(out.attention, counts)]
        return out.logits.double().numpy(), attention


@dataclass
class HeadInfo:
    """Everything saved next to the head's weights."""

    criterion: str
    threshold: float
    backbone_fingerprint: str
    feature_spec: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    density: dict | None = None  # FeatureDensity baseline state (plain tensors)


def save_head(head: ProbeHead, info: HeadInfo, path: str | os.PathLike) -> None:
    """Write the head file atomically; plain containers only, so weights_only loading works."""
    path = Path(path)
    payload = {
        "format": HEAD_FORMAT,
        "config": head.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        **asdict(info),
    }
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def load_head(path: str | os.PathLike) -> tuple[ProbeHead, HeadInfo]:
    """Load a head file with `weights_only=True` (no arbitrary unpickling).

    Other keys are ignored: older files also hold a copy of the calibration temperature,
    which the weights (the `temperature` buffer) already carry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist")
    rewrite = "re-run `probe-md train` to write it"
    if path.stat().st_size == 0:
        raise ValueError(f"head file {path} is empty: {rewrite}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises EOFError, OSError, RuntimeError, ... for a bad file
        raise ValueError(
            f"head file {path} is truncated, corrupt or not a probe-md head ({_first_line(error)}): {rewrite}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise ValueError(f"head file {path} is not a PROBE head ({HEAD_FORMAT}): {rewrite}")
    head = ProbeHead(HeadConfig(**payload["config"]))
    load_head_state(head, payload["state_dict"])
    info_fields = {k: payload[k] for k in HeadInfo.__dataclass_fields__ if k in payload}
    return head.eval(), HeadInfo(**info_fields)


# Added after the first heads shipped: a file without them loads with their defaults (no
# isotonic knots, no predicted error, the classifier's logit).
_OPTIONAL_STATE_PREFIXES = ("calibration_knots_", "error_", "logit_from_error", "log_threshold")


def load_head_state(head: ProbeHead, state: dict) -> None:
    """Load weights; the calibration knots take the file's size, newer parts may be absent."""
    for name in ("calibration_knots_x", "calibration_knots_y"):
        if name in state:
            setattr(head, name, torch.zeros_like(state[name]))
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(_OPTIONAL_STATE_PREFIXES)]
    if missing or unexpected:
        raise ValueError(f"head weights do not match the head: missing {missing}, unexpected {unexpected}")


def _first_line(error: BaseException) -> str:
    """The exception's type and the first line of its message (some have none)."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
