"""`probe-md evaluate`: PROBE vs ensemble disagreement vs feature density on one data set."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import ase
import numpy as np

from probe_md import metrics, plots
from probe_md.backbone import load_backbone
from probe_md.backbone.base import Backbone, StructurePrediction
from probe_md.baselines import FeatureDensity, ensemble_disagreement
from probe_md.error_prediction import interval_coverage
from probe_md.features import head_inputs, predict_dataset
from probe_md.head import ProbeHead
from probe_md.io_utils import atomic_write_text, check_output_path
from probe_md.reliability_labels import class_balance, label_reliable, structure_errors
from probe_md.structures import ReferenceKeys, read_structures
from probe_md.training import HeadInfo, ProbeClassifier, load_head


@dataclass
class EvaluateRequest:
    model_path: Path
    head_path: Path
    data_path: Path
    ensemble_paths: Sequence[Path] = field(default_factory=list)  # members besides the model
    keys: ReferenceKeys = ReferenceKeys()
    criterion: str | None = None  # default: the head's
    threshold: float | None = None  # default: the head's
    cache_dir: Path | None = None
    plots_dir: Path | None = None
    calibration_bins: int = 15


def evaluate(request: EvaluateRequest) -> dict:
    """Score every structure and compare PROBE with the baselines; returns the JSON report."""
    if request.plots_dir is not None:
        check_output_path(request.plots_dir, "plots folder", is_folder=True)
    head, info, backbone = load_matching_head(request.head_path, request.model_path)
    criterion = request.criterion or info.criterion
    threshold = request.threshold if request.threshold is not None else info.threshold
    structures = read_structures(request.data_path, request.keys)
    predictions = predict_dataset(backbone, structures, request.cache_dir, "model")
    errors = structure_errors(predictions, structures, criterion, request.keys)
    is_reliable = label_reliable(errors, threshold)
    features = head_inputs(predictions, head.reads_force_norm)
    classifier = ProbeClassifier.from_head(head)
    p_reliable = classifier.predict_proba(features)[:, 1]
    scores = {"PROBE (1 - p)": 1.0 - p_reliable, **baseline_scores(request, structures, predictions, info)}
    diagram = metrics.reliability_diagram(p_reliable, is_reliable, request.calibration_bins)
    binned = metrics.binned_error_by_probability(p_reliable, errors)
    balance = class_balance(is_reliable)
    report = {
        "data": str(request.data_path),
        "model": str(request.model_path),
        "head": str(request.head_path),
        "n_structures": len(structures),
        "criterion": criterion,
        "threshold": threshold,
        "reliable": balance.reliable,
        "unreliable": balance.unreliable,
        "mlip_error": {"mean": float(errors.mean()), "median": float(np.median(errors))},
        "methods": [metrics.summarize_scores(name, s, is_reliable, errors) for name, s in scores.items()],
        "probe_calibration": {
            "ece": metrics.expected_calibration_error(p_reliable, is_reliable, request.calibration_bins),
            "reliability_diagram": {k: np.asarray(v).tolist() for k, v in diagram._asdict().items()},
        },
        "probe_error_by_probability": {
            "p_mean": binned.p_mean.tolist(),
            "error_mean": binned.error_mean.tolist(),
            "counts": binned.counts.tolist(),
            "is_monotone": bool(binned.is_monotone),
        },
    }
    if criterion == info.criterion:  # the head predicts the error of its own criterion
        report["probe_predicted_error"] = predicted_error_report(classifier.predict_error(features), errors)
    if request.plots_dir is not None:
        curves = {name: metrics.risk_coverage(-s, ~is_reliable) for name, s in scores.items()}
        report["plots"] = write_plots(Path(request.plots_dir), curves, diagram, p_reliable, errors, threshold)
    return report


def predicted_error_report(predicted: np.ndarray, errors: np.ndarray) -> dict:
    """How the head's predicted error (median, 80 % interval) matches the actual error."""
    if np.isnan(predicted).any():
        return {"available": False}
    positive = (predicted[:, 0] > 0) & np.isfinite(predicted[:, 2])
    return {
        "available": True,
        "spearman": metrics.spearman(predicted[:, 1], errors),
        "interval_coverage": interval_coverage(predicted, errors),
        "median_abs_log_ratio": float(np.median(np.abs(np.log(predicted[:, 1] / np.maximum(errors, 1e-12))))),
        # intervals that reach 0 (lower bound at the error floor) or are unbounded have no finite ratio
        "median_interval_width_ratio": float(np.median(predicted[positive, 2] / predicted[positive, 0]))
        if positive.any() else float("nan"),
        "intervals_reaching_zero": float(np.mean(predicted[:, 0] <= 0)),
        # upper bound +inf: beyond the largest error the head was trained on
        "intervals_unbounded": float(np.mean(np.isinf(predicted[:, 2]))),
    }


def load_matching_head(head_path: Path, model_path: Path) -> tuple[ProbeHead, HeadInfo, Backbone]:
    """The head, what was saved with it, and the backbone; refused unless the head was trained
    on this backbone's features."""
    head, info = load_head(head_path)
    backbone = load_backbone(model_path)
    if info.backbone_fingerprint and info.backbone_fingerprint != backbone.fingerprint:
        raise ValueError(
            f"head {head_path} was trained on another backbone than {model_path} "
            f"(sha256 {info.backbone_fingerprint[:12]}… vs {backbone.fingerprint[:12]}…)"
        )
    if head.config.backbone_feature_dim != backbone.feature_dim:
        raise ValueError(
            f"head expects {head.config.backbone_feature_dim} features, backbone gives {backbone.feature_dim}"
        )
    return head, info, backbone


def baseline_scores(
    request: EvaluateRequest, structures: Sequence[ase.Atoms], predictions: Sequence[StructurePrediction],
    info: HeadInfo,
) -> dict[str, np.ndarray]:
    """Unreliability scores of the baselines: ensemble disagreement (when members are given)
    and the feature density saved with the head (when there is one)."""
    scores: dict[str, np.ndarray] = {}
    if request.ensemble_paths:
        members = [predictions] + [
            predict_dataset(load_backbone(path), structures, request.cache_dir, f"member {k + 2}")
            for k, path in enumerate(request.ensemble_paths)
        ]
        for name, values in ensemble_disagreement(members).items():
            scores[f"ensemble K={len(members)}: {name}"] = values
    if info.density is not None:
        density = FeatureDensity.from_state_dict(info.density)
        scores["feature density (Mahalanobis)"] = density.score([p.features for p in predictions])
    return scores


def write_plots(
    folder: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    diagram: metrics.ReliabilityDiagram,
    p_reliable: np.ndarray,
    errors: np.ndarray,
    threshold: float,
) -> list[str]:
    """Risk-coverage, reliability diagram and probability-vs-error PNGs; returns every PNG in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    plots.plot_risk_coverage(curves, folder / "risk_coverage.png")
    plots.plot_reliability_diagram(diagram, folder / "reliability_diagram.png")
    plots.plot_probability_vs_error(p_reliable, errors, threshold, folder / "probability_vs_error.png")
    return sorted(str(p) for p in folder.glob("*.png"))


def format_report(report: dict) -> str:
    """A table for people."""
    lines = [
        f"data {report['data']}: {report['n_structures']} structures, criterion {report['criterion']}"
        f" < {report['threshold']:.4g}: {report['reliable']} reliable / {report['unreliable']} unreliable",
        "",
        f"{'method':<44} {'AUROC':>6} {'AUPRC':>6} {'AURC':>6} {'risk@80':>7} {'risk@90':>7} {'Spearman':>8}",
    ]
    for row in report["methods"]:
        lines.append(
            f"{row[metrics.NAME]:<44} {row[metrics.AUROC]:6.3f} {row[metrics.AUPRC]:6.3f} "
            f"{row[metrics.AURC]:6.3f} {row[metrics.SELECTIVE_RISK_80]:7.3f} "
            f"{row[metrics.SELECTIVE_RISK_90]:7.3f} {row[metrics.SPEARMAN_ERROR]:8.3f}"
        )
    binned = report["probe_error_by_probability"]
    lines += [
        "",
        f"PROBE calibration: ECE = {report['probe_calibration']['ece']:.3f}",
        *_predicted_error_lines(report.get("probe_predicted_error")),
        "PROBE error by probability bin (p -> mean error): "
        + ", ".join(f"{p:.2f}->{e:.3g}" for p, e in zip(binned["p_mean"], binned["error_mean"]))
        + (" (monotone)" if binned["is_monotone"] else " (NOT monotone)"),
    ]
    return "\n".join(lines)


def _predicted_error_lines(section: dict | None) -> list[str]:
    if not section or not section["available"]:
        return []
    return [
        f"PROBE predicted error: Spearman {section['spearman']:.3f} with the actual error, 80 % interval covers "
        f"{100 * section['interval_coverage']:.0f} % (median upper/lower {section['median_interval_width_ratio']:.2f}x, "
        f"median |log(pred/actual)| {section['median_abs_log_ratio']:.2f})"
    ] + ([f"  {100 * zero:.0f} % of the intervals reach 0 (their lower bound is at the head's error floor, "
          "1 % of the threshold)"] if (zero := section.get("intervals_reaching_zero", 0.0)) > 0 else []) \
      + ([f"  {100 * unbounded:.0f} % have no upper bound (beyond the largest error the head was trained on)"]
         if (unbounded := section.get("intervals_unbounded", 0.0)) > 0 else [])


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Atomic JSON write (nan -> null so strict parsers accept it)."""
    atomic_write_text(path, json.dumps(_nan_to_none(report), indent=2))


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _nan_to_none(value.item())
    return value
