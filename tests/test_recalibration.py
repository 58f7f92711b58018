"""`probe-md calibrate`: a head's calibration refitted on labelled frames of another regime."""

import ase.io
import numpy as np
import pytest
import torch

from conftest import rattled_cu
from probe_md.cli.main import main
from probe_md.error_prediction import pooled_vectors
from probe_md.error_recalibration import error_terms, fit_error_shift
from probe_md.features import head_inputs, predict_dataset
from probe_md.backbone import load_backbone
from probe_md.pipeline import TrainRequest, train_probe
from probe_md.recalibration import CalibrateRequest, calibrate
from probe_md.reliability_labels import structure_errors
from probe_md.structures import read_structures
from probe_md.training import TrainingConfig, load_head


@pytest.fixture(scope="module")
def head_and_shifted_frames(tiny_mace_path, cu_extxyz, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recalibration")
    head_path = folder / "head.pt"
    train_probe(TrainRequest(
        model_path=tiny_mace_path, data_paths=[cu_extxyz], output_path=head_path, cache_dir=None,
        training=TrainingConfig(max_epochs=5, validation_fraction=0.25, calibration_fraction=0.25),
    ))
    shifted = folder / "shifted.extxyz"  # bigger rattles than the head was trained on
    ase.io.write(shifted, rattled_cu(30, seed=11, amplitude=(0.05, 0.35)))
    return head_path, shifted


def test_calibrate_refits_the_map_and_reports_held_out_ece(head_and_shifted_frames, tiny_mace_path, tmp_path):
    head_path, shifted = head_and_shifted_frames
    out = tmp_path / "recalibrated.pt"
    report = calibrate(CalibrateRequest(head_path, [shifted], out, tiny_mace_path, folds=3))
    assert report["n_frames"] == 30 and set(report["held_out_nll"]) == {"temperature", "error"}  # < 40: no isotonic
    assert 0 <= report["ece_after_out_of_fold"] <= 1 and 0 <= report["ece_before"] <= 1
    assert "interval_coverage_after_out_of_fold" in report  # train_probe fitted a predicted error

    # The written head maps the base logit exactly as a map fitted independently here does.
    head, info = load_head(head_path)
    new_head, new_info = load_head(out)
    structures = read_structures(shifted)
    predictions = predict_dataset(load_backbone(tiny_mace_path), structures, None, "features")
    pooled = pooled_vectors(head, head_inputs(predictions, head.reads_force_norm))
    errors = structure_errors(predictions, structures, info.criterion)
    terms = error_terms(head, pooled, errors, info.threshold)  # the head reads its error: that map, outright
    expected = fit_error_shift(terms, np.arange(len(errors))).logits(terms, np.arange(len(errors)))
    with torch.no_grad():
        np.testing.assert_allclose(new_head.readout_logit(*pooled).numpy(), expected, atol=1e-5)
    assert new_info.metrics["recalibration"]["chosen"] == report["chosen"] == "error"
    assert new_info.threshold == info.threshold  # what "reliable" means does not change


def test_cli_calibrate_prints_before_and_after(head_and_shifted_frames, tiny_mace_path, tmp_path, capsys):
    head_path, shifted = head_and_shifted_frames
    out = tmp_path / "h2.pt"
    code = main(["calibrate", "--head", str(head_path), "--model", str(tiny_mace_path), "--data", str(shifted),
                 "-o", str(out), "--no-cache", "--folds", "3"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "ECE" in text and "->" in text and "out of fold" in text


def test_cli_calibrate_bad_input_is_one_line_before_any_work(head_and_shifted_frames, tiny_mace_path, tmp_path,
                                                              capsys, monkeypatch):
    head_path, shifted = head_and_shifted_frames
    monkeypatch.setattr("probe_md.recalibration.predict_dataset", lambda *a, **k: pytest.fail("work started"))
    cases = [
        (["--data", str(shifted), "-o", str(tmp_path / "nodir" / "x" / "h.pt"), "--folds", "1"], "--folds must be >= 2"),
        (["--data", str(tmp_path / "missing.extxyz"), "-o", str(tmp_path / "h.pt")], "missing.extxyz"),
        (["--data", str(shifted), "-o", str(shifted.parent / "shifted.extxyz" / "h.pt")], "h.pt"),
    ]
    for extra, expected in cases:
        code = main(["calibrate", "--head", str(head_path), "--model", str(tiny_mace_path), "--no-cache", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_retrain_recalibrates_its_refitted_head_on_the_held_out_new_frames(head_and_shifted_frames, tiny_mace_path,
                                                                           tmp_path):
    from probe_md.loop.retrain import recalibrate_head

    head_path, shifted = head_and_shifted_frames
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "new_holdout.extxyz").write_bytes(shifted.read_bytes())
    out_head = tmp_path / "head.pt"
    out_head.write_bytes(head_path.read_bytes())
    report = recalibrate_head(tiny_mace_path, out_head, tmp_path)
    assert report["n_frames"] == 30 and "ece_after_out_of_fold" in report
    assert report["calibrated_on"] == "the held-out new frames"
    assert (tmp_path / "head_before_calibration.pt").read_bytes() == head_path.read_bytes()
    assert load_head(out_head)[1].metrics["recalibration"]["n_frames"] == 30


def test_too_few_frames_are_refused_before_any_work(head_and_shifted_frames, tiny_mace_path, tmp_path, monkeypatch):
    head_path, _ = head_and_shifted_frames
    few = tmp_path / "few.extxyz"
    ase.io.write(few, rattled_cu(8, seed=12, amplitude=(0.05, 0.35)))
    monkeypatch.setattr("probe_md.recalibration.predict_dataset", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match="at least 20 labelled frames, got 8"):
        calibrate(CalibrateRequest(head_path, [few], tmp_path / "h.pt", tiny_mace_path))
    assert not (tmp_path / "h.pt").exists()


def test_retrain_keeps_the_heads_calibration_when_too_few_frames_are_held_out(head_and_shifted_frames,
                                                                              tiny_mace_path, tmp_path):
    from probe_md.loop.retrain import recalibrate_head

    head_path, _ = head_and_shifted_frames
    (tmp_path / "data").mkdir()
    ase.io.write(tmp_path / "data" / "new_holdout.extxyz", rattled_cu(8, seed=13, amplitude=(0.05, 0.35)))
    out_head = tmp_path / "head.pt"
    out_head.write_bytes(head_path.read_bytes())
    report = recalibrate_head(tiny_mace_path, out_head, tmp_path)
    assert report.startswith("skipped: recalibration needs at least 20 labelled frames, got 8")
    assert out_head.read_bytes() == head_path.read_bytes()


def test_retrain_recalibrates_on_the_calibration_data_instead_when_given(head_and_shifted_frames, tiny_mace_path,
                                                                         tmp_path):
    """Frames picked regardless of the monitor (e.g. every k-th of a run) replace the held-out
    new frames, which the monitor picked; carved pieces among them are left out."""
    from probe_md.loop.carve import ARRAY_CORE
    from probe_md.loop.retrain import recalibrate_head

    head_path, shifted = head_and_shifted_frames
    (tmp_path / "data").mkdir()
    ase.io.write(tmp_path / "data" / "new_holdout.extxyz", rattled_cu(8, seed=13, amplitude=(0.05, 0.35)))
    carved = rattled_cu(3, seed=14)
    for atoms in carved:
        atoms.arrays[ARRAY_CORE] = np.ones(len(atoms), dtype=bool)
    calibration = tmp_path / "every_kth.extxyz"
    ase.io.write(calibration, ase.io.read(shifted, ":") + carved)
    out_head = tmp_path / "head.pt"
    out_head.write_bytes(head_path.read_bytes())
    report = recalibrate_head(tiny_mace_path, out_head, tmp_path, [calibration])
    assert report["calibrated_on"] == "the calibration data" and report["n_frames"] == 30
    assert load_head(out_head)[1].metrics["recalibration"]["n_frames"] == 30
