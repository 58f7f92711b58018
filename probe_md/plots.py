"""Report figures (PNG, no screen needed), each written atomically.

Figures are built on matplotlib's object API with the Agg canvas rather than pyplot, so
no global backend or figure state is touched and nothing leaks between calls.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probe_md.io_utils import atomic_output
from probe_md.metrics import ReliabilityDiagram, binned_error_by_probability


def _save_atomically(figure: Figure, path: str | os.PathLike) -> Path:
    """Render to a temp file next to `path`, then rename: a crash never leaves half a PNG."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        figure.savefig(handle, format="png", dpi=150)
    return path


def plot_risk_coverage(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Path:
    """Selective risk vs coverage, one line per method; the legend shows each AURC."""
    if not curves:
        raise ValueError("curves is empty; pass {name: (coverage, risk)} for at least one method")
    figure = Figure(figsize=(5, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, (coverage, risk) in curves.items():
        coverage, risk = np.asarray(coverage), np.asarray(risk)
        if coverage.shape != risk.shape or coverage.ndim != 1:
            raise ValueError(
                f"curve {name!r}: coverage {coverage.shape} and risk {risk.shape} must be equal-length 1-D"
            )
        axes.plot(coverage, risk, label=f"{name} (AURC {np.mean(risk):.3f})")
    axes.set_xlabel("coverage (fraction of structures accepted)")
    axes.set_ylabel("selective risk (unreliable fraction)")
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save_atomically(figure, path)


def plot_reliability_diagram(diagram: ReliabilityDiagram, path: str | os.PathLike) -> Path:
    """Observed reliable fraction vs predicted p_reliable per bin, with bin counts below."""
    centers = np.asarray(diagram.bin_centers)
    counts = np.asarray(diagram.counts)
    if counts.sum() == 0:
        raise ValueError("reliability diagram has no samples in any bin")
    width = 1.0 / centers.size
    filled = counts > 0
    gaps = np.abs(diagram.accuracy[filled] - diagram.confidence[filled])
    ece = float(np.sum(counts[filled] * gaps) / counts.sum())

    figure = Figure(figsize=(5, 5.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(centers[filled], np.asarray(diagram.accuracy)[filled], width=width,
            edgecolor="black", alpha=0.7, label="observed reliable fraction")  # fmt: skip
    top.plot(diagram.confidence[filled], diagram.accuracy[filled], "o", color="C3",
             label="(mean p, observed)")  # fmt: skip
    top.set_ylabel("fraction reliable")
    top.set_ylim(0, 1)
    top.set_title(f"ECE = {ece:.3f}")
    top.legend(fontsize="small", loc="upper left")
    bottom.bar(centers, counts, width=width, edgecolor="black", color="C7")
    bottom.set_xlabel("predicted p_reliable")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    return _save_atomically(figure, path)


def plot_probability_vs_error(
    p_reliable, error, threshold: float, path: str | os.PathLike
) -> Path:
    """Scatter of p_reliable vs actual error, the reliability threshold, and binned means."""
    p_reliable = np.asarray(p_reliable, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    binned = binned_error_by_probability(p_reliable, error)  # also validates the inputs
    reliable = error < threshold

    figure = Figure(figsize=(5, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(p_reliable[reliable], error[reliable], s=8, alpha=0.5, color="C0",
                 label="reliable (error < threshold)")  # fmt: skip
    axes.scatter(p_reliable[~reliable], error[~reliable], s=8, alpha=0.5, color="C3",
                 label="unreliable")  # fmt: skip
    axes.plot(binned.p_mean, binned.error_mean, "k-o", label="mean error per quantile bin")
    axes.axhline(threshold, linestyle="--", color="grey", label=f"threshold {threshold:g}")
    if np.all(error > 0) and threshold > 0:
        axes.set_yscale("log")  # errors span decades; only possible when all are positive
    axes.set_xlabel("predicted p_reliable")
    axes.set_ylabel("actual error")
    axes.set_xlim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save_atomically(figure, path)
