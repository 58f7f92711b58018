"""Tests for probe_md.plots: each figure is written as a complete PNG, atomically."""

import numpy as np
import pytest

from probe_md import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    p_reliable = rng.random(60)
    error = np.exp(rng.normal(size=60)) * (1.5 - p_reliable)
    return p_reliable, error


def _assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    # no temp files left behind next to the figure
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


def test_plot_risk_coverage(tmp_path, data):
    p_reliable, error = data
    is_error = error >= 1.0
    curves = {
        "probe": metrics.risk_coverage(p_reliable, is_error),
        "random": metrics.risk_coverage(np.zeros_like(p_reliable), is_error),
    }
    path = plots.plot_risk_coverage(curves, tmp_path / "risk_coverage.png")
    _assert_png(path)


def test_plot_risk_coverage_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="curves is empty"):
        plots.plot_risk_coverage({}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_reliability_diagram(tmp_path, data):
    p_reliable, error = data
    diagram = metrics.reliability_diagram(p_reliable, error < 1.0, n_bins=10)
    _assert_png(plots.plot_reliability_diagram(diagram, tmp_path / "reliability.png"))


def test_plot_probability_vs_error_creates_folder(tmp_path, data):
    p_reliable, error = data
    path = plots.plot_probability_vs_error(p_reliable, error, 1.0, tmp_path / "figures" / "p_vs_error.png")
    _assert_png(path)


def test_failed_plot_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        plots.plot_probability_vs_error([0.1, 0.2], [1.0], 0.5, tmp_path / "p_vs_error.png")
    assert list(tmp_path.iterdir()) == []


def test_crash_while_rendering_leaves_no_partial_file(tmp_path, data, monkeypatch):
    from matplotlib.figure import Figure

    def failing_savefig(self, file, **kwargs):
        file.write(b"\x89PNG half a figure")
        raise OSError("disk full")

    target = tmp_path / "reliability.png"
    target.write_bytes(b"previous figure")
    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    diagram = metrics.reliability_diagram(data[0], data[1] < 1.0)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_reliability_diagram(diagram, target)
    assert [entry.name for entry in tmp_path.iterdir()] == ["reliability.png"]
    assert target.read_bytes() == b"previous figure"
