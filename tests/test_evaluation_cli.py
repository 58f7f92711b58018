"""End to end on tiny inputs: train a head, evaluate it with an ensemble, through the CLI."""

import json

import numpy as np
import pytest

from probe_md.backbone import load_backbone
from probe_md.cli.main import main
from probe_md.evaluation import EvaluateRequest, evaluate, format_report
from probe_md.features import head_inputs
from probe_md.pipeline import TrainRequest, train_probe
from probe_md.reliability_labels import structure_errors
from probe_md.structures import read_structures
from probe_md.training import ProbeClassifier, TrainingConfig, load_head


@pytest.fixture(scope="module")
def trained_head(tiny_mace_path, cu_extxyz, tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "head.pt"
    request = TrainRequest(
        model_path=tiny_mace_path,
        data_paths=[cu_extxyz],
        output_path=out,
        cache_dir=tmp_path_factory.mktemp("cache"),
        training=TrainingConfig(max_epochs=5, validation_fraction=0.25, calibration_fraction=0.25),
    )
    _, info = train_probe(request)
    return out, info


def test_train_saves_everything_needed(trained_head, tiny_mace_path):
    path, info = trained_head
    head, loaded = load_head(path)
    assert loaded.threshold == pytest.approx(info.threshold) and loaded.threshold > 0
    assert loaded.feature_spec["feature_dim"] == head.config.backbone_feature_dim == 16
    assert head.config.reads_force_norm and head.config.feature_dim == 17  # + the MLIP's force norm
    assert loaded.density is not None and loaded.training["epochs_run"] >= 1
    assert loaded.metrics["reliable"] > 0 and loaded.metrics["unreliable"] > 0


def test_evaluate_report_with_ensemble_and_plots(trained_head, tiny_mace_path, tiny_member_path, cu_extxyz, tmp_path):
    path, _ = trained_head
    report = evaluate(
        EvaluateRequest(
            model_path=tiny_mace_path,
            head_path=path,
            data_path=cu_extxyz,
            ensemble_paths=[tiny_member_path],
            plots_dir=tmp_path / "plots",
        )
    )
    names = [row["name"] for row in report["methods"]]
    assert names[0].startswith("PROBE") and any("ensemble K=2" in n for n in names)
    assert any("density" in n for n in names)
    assert report["probe_calibration"]["ece"] == pytest.approx(ece_by_hand(path, tiny_mace_path, cu_extxyz), abs=1e-12)
    assert sum(report["probe_calibration"]["reliability_diagram"]["counts"]) == report["n_structures"] == 24
    assert {p.split("/")[-1] for p in report["plots"]} == {
        "risk_coverage.png", "reliability_diagram.png", "probability_vs_error.png"
    }
    assert "AUROC" in format_report(report)


def ece_by_hand(head_path, model_path, data_path, n_bins=15):
    """ECE from scratch: PROBE's P(reliable) per structure against its label, 15 equal-width bins."""
    head, info = load_head(head_path)
    structures = read_structures(data_path)
    predictions = load_backbone(model_path).predict(structures)
    is_reliable = structure_errors(predictions, structures, info.criterion) < info.threshold
    p_reliable = ProbeClassifier.from_head(head).predict_proba(head_inputs(predictions, head.reads_force_norm))[:, 1]
    bins = np.minimum(np.floor(p_reliable * n_bins), n_bins - 1)
    gaps = [abs(p_reliable[bins == b].mean() - is_reliable[bins == b].mean()) * np.sum(bins == b) for b in set(bins)]
    return sum(gaps) / len(structures)


def test_cli_evaluate_json(trained_head, tiny_mace_path, cu_extxyz, tmp_path, capsys):
    path, _ = trained_head
    out = tmp_path / "report.json"
    code = main(["evaluate", "--model", str(tiny_mace_path), "--head", str(path), "--data", str(cu_extxyz),
                 "--json", str(out), "--no-cache"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_structures"] == 24 and "AUROC" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(trained_head, tiny_mace_path, tiny_member_path, tmp_path, capsys):
    path, _ = trained_head
    code = main(["evaluate", "--model", str(tiny_mace_path), "--head", str(path),
                 "--data", str(tmp_path / "missing.extxyz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "missing.extxyz does not exist" in err
    # A head trained on another backbone is refused by hash.
    code = main(["evaluate", "--model", str(tiny_member_path), "--head", str(path),
                 "--data", str(tmp_path / "missing.extxyz")])
    assert code == 2 and "another backbone" in capsys.readouterr().err


def test_cli_train_without_the_force_norm_reads_the_backbone_features_only(tiny_mace_path, cu_extxyz, tmp_path):
    out = tmp_path / "h.pt"
    code = main(["train", "--model", str(tiny_mace_path), "--data", str(cu_extxyz), "-o", str(out), "--no-cache",
                 "--max-epochs", "2", "--no-force-norm"])
    head, _ = load_head(out)
    assert code == 0 and not head.reads_force_norm and head.config.feature_dim == head.config.backbone_feature_dim == 16


def test_cli_train_bad_threshold(tiny_mace_path, cu_extxyz, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_mace_path), "--data", str(cu_extxyz), "-o",
                 str(tmp_path / "h.pt"), "--threshold", "-1", "--no-cache"])
    assert code == 2 and "threshold must be a positive" in capsys.readouterr().err


def must_not_run(*_args, **_kwargs):
    raise AssertionError("work started before the output path was checked")


def test_train_output_is_checked_before_any_work(tiny_mace_path, cu_extxyz, tmp_path, capsys, monkeypatch):
    import probe_md.pipeline

    monkeypatch.setattr(probe_md.pipeline, "load_backbone", must_not_run)
    (tmp_path / "afile").write_text("x")  # a path under a regular file is unwritable even for root
    code = main(["train", "--model", str(tiny_mace_path), "--data", str(cu_extxyz), "-o",
                 str(tmp_path / "afile" / "h.pt"), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write head file" in err and "afile" in err


@pytest.mark.parametrize("option", ["--json", "--plots"])
def test_evaluate_outputs_are_checked_before_any_work(trained_head, tiny_mace_path, cu_extxyz, tmp_path, capsys,
                                                      monkeypatch, option):
    import probe_md.evaluation

    monkeypatch.setattr(probe_md.evaluation, "load_head", must_not_run)
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out"
    code = main(["evaluate", "--model", str(tiny_mace_path), "--head", str(trained_head[0]),
                 "--data", str(cu_extxyz), option, str(target), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{target} (" in err


def test_cli_train_prints_the_library_progress(tiny_mace_path, cu_extxyz, tmp_path, capsys):
    """probe_md modules log; the CLI shows those lines on stdout, as it printed them before."""
    code = main(["train", "--model", str(tiny_mace_path), "--data", str(cu_extxyz), "-o", str(tmp_path / "h.pt"),
                 "--max-epochs", "3", "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("criterion force-rmse, threshold ") and "reliable / " in out
    assert "\nhead trained: " in out and f"wrote {tmp_path / 'h.pt'}: threshold" in out


def test_the_predicted_error_report_counts_intervals_at_zero_and_unbounded_ones():
    from probe_md.evaluation import _predicted_error_lines, predicted_error_report

    predicted = np.array([[0.01, 0.02, 0.04], [0.0, 0.001, 0.005], [3.0, 3.0, np.inf], [0.02, 0.03, 0.06]])
    errors = np.array([0.03, 0.0, 15.0, 0.1])
    report = predicted_error_report(predicted, errors)
    assert report["available"] and report["interval_coverage"] == 0.75  # the last one is above its interval
    assert report["intervals_reaching_zero"] == 0.25 and report["intervals_unbounded"] == 0.25
    assert report["median_interval_width_ratio"] == pytest.approx(3.5)  # 4x and 3x; no 0 or inf
    lines = "\n".join(_predicted_error_lines(report))
    assert "25 % of the intervals reach 0" in lines and "25 % have no upper bound" in lines
    assert not predicted_error_report(np.full((2, 3), np.nan), errors[:2])["available"]
