"""Training a PROBE head end to end: backbone predictions -> labels -> fit -> calibrate -> save."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from probe_md.backbone import load_backbone
from probe_md.baselines import FeatureDensity
from probe_md.features import head_inputs, predict_dataset
from probe_md.io_utils import check_output_path
from probe_md.reliability_labels import (
    DEFAULT_CRITERION,
    DEFAULT_THRESHOLD_MULTIPLE,
    FORCE_CRITERIA,
    atom_force_errors,
    class_balance,
    check_threshold,
    default_threshold,
    label_reliable,
    structure_errors,
)
from probe_md.structures import ReferenceKeys, read_structures
from probe_md.training import HeadInfo, ProbeClassifier, TrainingConfig, save_head

logger = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    """Inputs of `probe-md train`."""

    model_path: Path
    data_paths: Sequence[Path]
    output_path: Path
    in_domain_path: Path | None = None  # MLIP validation data: sets the default threshold
    criterion: str = DEFAULT_CRITERION
    threshold: float | None = None
    keys: ReferenceKeys = ReferenceKeys()
    cache_dir: Path | None = None
    head_config: dict | None = None
    training: TrainingConfig | None = None
    # The head also reads the MLIP's per-atom force norm (probe_md.head.force_norm_column):
    # on Si DFT it lifts force-RMSE AUROC by 0.05 (docs/notes/force_norm_input.md).
    force_norm: bool = True


def train_probe(request: TrainRequest) -> tuple[ProbeClassifier, HeadInfo]:
    """Train, calibrate and save a head; returns the classifier and what was saved with it."""
    check_output_path(request.output_path, "head file")
    backbone = load_backbone(request.model_path)
    structures = [a for path in request.data_paths for a in read_structures(path, request.keys)]
    predictions = predict_dataset(backbone, structures, request.cache_dir, "features")
    errors = structure_errors(predictions, structures, request.criterion, request.keys)
    if request.threshold is not None:
        threshold = check_threshold(request.threshold)
        threshold_rule = "given"
    elif request.in_domain_path is not None:
        in_domain = read_structures(request.in_domain_path, request.keys)
        in_domain_errors = structure_errors(
            predict_dataset(backbone, in_domain, request.cache_dir, "in-domain"),
            in_domain,
            request.criterion,
            request.keys,
        )
        threshold = default_threshold(in_domain_errors)
        threshold_rule = f"{DEFAULT_THRESHOLD_MULTIPLE} x RMS error on {request.in_domain_path}"
    else:
        # Without in-domain data, the best 25 % of the training data stand in for it.
        threshold = default_threshold(np.sort(errors)[: max(len(errors) // 4, 1)])
        threshold_rule = f"{DEFAULT_THRESHOLD_MULTIPLE} x RMS error of the best quarter of the data"
    is_reliable = label_reliable(errors, threshold)
    balance = class_balance(is_reliable)
    logger.info("criterion %s, threshold %.4g (%s): %s", request.criterion, threshold, threshold_rule, balance)
    features = head_inputs(predictions, request.force_norm)
    # Per-atom force errors feed the auxiliary target where the criterion is about forces.
    atom_errors = (atom_force_errors(predictions, structures, request.keys)
                   if request.criterion in FORCE_CRITERIA else None)
    head_config = {**(request.head_config or {}), "reads_force_norm": request.force_norm}
    classifier = ProbeClassifier(head_config, request.training).fit(
        features, is_reliable, errors, threshold, atom_errors)
    # the density baseline reads the backbone's features alone, as before
    reliable_train = [predictions[i].features for i in classifier.split_.train if is_reliable[i]]
    density = FeatureDensity().fit(reliable_train)
    info = HeadInfo(
        criterion=request.criterion,
        threshold=threshold,
        backbone_fingerprint=backbone.fingerprint,
        feature_spec={
            "backbone": type(backbone).__name__,
            "species": list(backbone.species),
            "cutoff": backbone.cutoff,
            "num_layers": backbone.num_layers,
            "feature_dim": backbone.feature_dim,
            "columns": list(getattr(getattr(backbone, "metadata", None), "feature_columns", [])),
        },
        metrics={
            "threshold_rule": threshold_rule,
            "reliable": balance.reliable,
            "unreliable": balance.unreliable,
        },
        training=dict(classifier.training_summary_),
        density=density.state_dict(),
    )
    save_head(classifier.head_, info, request.output_path)
    return classifier, info
