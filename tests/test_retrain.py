"""probe_md.loop.retrain: a tiny mace_run_train fine-tune, conversion, head refit, export, report."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch

from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.lammps.export import read_fused_metadata
from probe_md.loop.retrain import (
    ConfigFieldError,
    RetrainConfig,
    format_report,
    head_pool_paths,
    foundation_e0s,
    foundation_mismatch_ev_per_a,
    kept_criterion,
    mace_arguments,
    retrain,
    split_new_frames,
    split_new_frames_three_ways,
)

from conftest import rattled_cu


@pytest.fixture(scope="module")
def tiny_pickled_model(tmp_path_factory):
    """What mace_run_train writes: a pickled python model (here random, tiny), with its E0s
    stored per head as [n_heads, n_elements] like mace_run_train stores them."""
    path = tmp_path_factory.mktemp("foundation") / "tiny.model"
    model = build_mace_model(seed=0, num_channels=8, num_layers=1, correlation=1)
    model.atomic_energies_fn.atomic_energies = model.atomic_energies_fn.atomic_energies.reshape(1, -1)
    torch.save(model, path)
    return path


def write(path, structures):
    ase.io.write(path, structures)
    return path


def test_split_new_frames_holds_out_at_least_one():
    frames = rattled_cu(5, seed=1, size=1)
    train, holdout = split_new_frames(frames, 0.25, seed=0)
    assert len(train) == 4 and len(holdout) == 1
    assert split_new_frames(frames[:1], 0.25, seed=0) == (frames[:1], [])
    with pytest.raises(ValueError, match="holdout fraction"):
        split_new_frames(frames, 1.0, seed=0)


def test_three_way_split_keeps_every_frame_once():
    frames = rattled_cu(10, seed=2, size=1)
    split = split_new_frames_three_ways(frames, 0.2, 0.25, seed=0)
    assert (len(split.train), len(split.valid), len(split.holdout)) == (6, 2, 2)
    ids = sorted(id(a) for a in split.train + split.valid + split.holdout)
    assert ids == sorted(id(a) for a in frames)
    assert split_new_frames_three_ways(frames, 0.2, 0.0, seed=0).valid == []
    with pytest.raises(ValueError, match="validation fraction"):
        split_new_frames_three_ways(frames, 0.2, 1.5, seed=0)


def test_mace_arguments_fine_tune_the_foundation(tmp_path):
    config = RetrainConfig(foundation_model=tmp_path / "x.model", new_data=[tmp_path / "n.extxyz"],
                           out_dir=tmp_path, epochs=3, extra_mace_args=["--ema"], energy_weight=1.0,
                           stress_weight=0.0, new_frame_weight=1.0)
    arguments = mace_arguments(config, tmp_path / "train.extxyz", None)
    assert f"--foundation_model={(tmp_path / 'x.model').resolve()}" in arguments
    assert "--max_num_epochs=3" in arguments and "--E0s=foundation" in arguments
    assert "--stress_key=PROBE_MD_NO_STRESS" in arguments
    with_e0s = mace_arguments(config, tmp_path / "train.extxyz", None, e0s={29: -3.5})
    assert "--E0s={29: -3.5}" in with_e0s
    config.stress_weight = 1000.0
    with_stress = mace_arguments(config, tmp_path / "train.extxyz", None)
    assert {"--loss=stress", "--stress_key=REF_stress", "--stress_weight=1000.0"} <= set(with_stress)
    assert "--valid_fraction=0.1" in arguments and arguments[-1] == "--ema"
    assert {"--energy_weight=1.0", "--forces_weight=100.0"} <= set(arguments)
    assert not any(a.startswith("--config_type_weights") for a in arguments)
    config.energy_weight, config.new_frame_weight = 1000.0, 4.0
    weighted = mace_arguments(config, tmp_path / "train.extxyz", None)
    assert "--energy_weight=1000.0" in weighted
    assert "--config_type_weights={'probe_md_flagged': 4.0}" in weighted


@pytest.mark.parametrize("field_name, value, message", [
    ("energy_weight", -1.0, "energy_weight must be >= 0, got -1.0"),
    ("new_frame_weight", 0.0, "new_frame_weight must be > 0, got 0.0"),
    ("epochs", 0, "epochs must be >= 1, got 0"),
    ("max_old_frames", -1, "max_old_frames must be >= 0, got -1"),
    ("holdout_fraction", 1.0, r"holdout_fraction must be in \[0, 1\), got 1.0"),
    ("ema_decay", 1.5, r"ema_decay must be in \(0, 1\), got 1.5"),
    ("new_data", [], "new_data is empty"),
])
def test_config_refuses_bad_values_naming_the_field(tmp_path, field_name, value, message):
    fields = {"foundation_model": tmp_path / "x.model", "new_data": [tmp_path / "n.extxyz"], "out_dir": tmp_path}
    with pytest.raises(ConfigFieldError, match=message) as caught:
        RetrainConfig(**{**fields, field_name: value})
    assert caught.value.field == field_name


@pytest.mark.parametrize("option, value, message", [
    ("--energy-weight", "-1", "--energy-weight must be >= 0, got -1.0"),
    ("--max-old", "-1", "--max-old must be >= 0, got -1"),  # the field is max_old_frames
    ("--threshold", "0", "--threshold must be > 0, got 0.0"),  # the field is head_threshold
])
def test_retrain_cli_names_the_option_of_a_bad_value(tmp_path, capsys, option, value, message):
    from probe_md.cli.main import main

    argv = ["retrain", "--new-data", str(tmp_path / "n.extxyz"), "-o", str(tmp_path / "out"), option, value]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"probe-md retrain: error: {message}\n"


def test_retrain_cli_names_a_missing_foundation(tmp_path, capsys):
    from probe_md.cli.main import main

    argv = ["retrain", "--new-data", str(tmp_path / "n.extxyz"), "-o", str(tmp_path / "out"),
            "--foundation-model", str(tmp_path / "missing.model"), "--mace-args=--ema"]
    assert main(argv) == 2
    assert "missing.model does not exist" in capsys.readouterr().err


def test_retrain_rejects_torchscript_foundation_without_config(tmp_path, tiny_mace_path):
    bare = tmp_path / "bare.pt"
    bare.write_bytes(tiny_mace_path.read_bytes())  # a TorchScript file without its .mace_config.json
    config = RetrainConfig(foundation_model=bare, new_data=[tmp_path / "n.extxyz"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="without an architecture config.*pickled mace-torch .model"):
        retrain(config)


def test_foundation_mismatch_detects_another_model(tmp_path, tiny_pickled_model, tiny_mace_path):
    structures = rattled_cu(2, seed=5, size=1)
    same = tmp_path / "same.pt"
    save_mace_model(torch.load(tiny_pickled_model, weights_only=False), same)
    pickled = MaceBackbone.from_file(tiny_pickled_model, allow_pickle=True)
    assert foundation_mismatch_ev_per_a(MaceBackbone.from_file(same), pickled, structures) < 1e-9
    other = MaceBackbone.from_file(tiny_mace_path)
    assert foundation_mismatch_ev_per_a(other, pickled, structures) > 1e-3


def test_refitted_head_keeps_the_criterion_of_the_head_in_use(tmp_path):
    from probe_md.head import HeadConfig, ProbeHead
    from probe_md.training import HeadInfo, save_head

    head_path = tmp_path / "head.pt"
    save_head(ProbeHead(HeadConfig(feature_dim=4)).eval(), HeadInfo("force-max", 0.07, "t"), head_path)
    config = RetrainConfig(foundation_model=tmp_path / "x.model", new_data=[tmp_path / "n.extxyz"], out_dir=tmp_path)
    assert kept_criterion(config) == ("force-rmse", None)  # probe-md train's own rule
    config.before_head = head_path
    assert kept_criterion(config) == ("force-max", 0.07)
    config.head_threshold = 0.1  # an explicit threshold wins
    assert kept_criterion(config) == ("force-max", 0.1)
    config.before_head = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        kept_criterion(config)


def test_foundation_e0s_reads_per_head_energies(tiny_pickled_model):
    model = torch.load(tiny_pickled_model, weights_only=False)
    assert foundation_e0s(model) == {29: pytest.approx(-3.0)}


@pytest.mark.parametrize("foundation_format", ["pickle", "torchscript"])
def test_tiny_retrain_end_to_end(tmp_path, tiny_pickled_model, cu_extxyz, foundation_format):
    """1 epoch of mace_run_train on 16 tiny cells (~15 s), from a pickled model or from a
    TorchScript file + config (rebuilt into foundation.model)."""
    foundation = tiny_pickled_model
    if foundation_format == "torchscript":
        foundation = tmp_path / "foundation.pt"
        save_mace_model(torch.load(tiny_pickled_model, weights_only=False), foundation)
    new = write(tmp_path / "new.extxyz", rattled_cu(5, seed=11, amplitude=(0.2, 0.3), size=1))
    old = write(tmp_path / "old.extxyz", rattled_cu(12, seed=12, amplitude=(0.01, 0.1), size=1))
    valid = write(tmp_path / "valid.extxyz", rattled_cu(4, seed=13, amplitude=(0.01, 0.1), size=1))
    out = tmp_path / "round1"
    report = retrain(RetrainConfig(
        foundation_model=foundation,
        new_data=[new],
        old_data=[old],
        valid_data=valid,
        head_data=[cu_extxyz],
        out_dir=out,
        epochs=1,
        batch_size=4,
        head_threshold=0.3,
        head_max_epochs=3,
        new_valid_fraction=0.25,
        new_frame_weight=3.0,
    ))

    assert report["frames"] == {"new_train": 3, "new_valid": 1, "new_holdout": 1, "old_replayed": 12, "valid": 4}
    for when in ("errors_before", "errors_after"):
        assert report[when]["new_holdout"]["structures"] == 1
        assert report[when]["valid"]["force_rmse_ev_per_a"] > 0
    # training moved the weights: the errors changed
    assert report["errors_after"]["new_train"] != report["errors_before"]["new_train"]
    trained_on = ase.io.read(out / "data" / "train.extxyz", ":")
    assert len(trained_on) == 15
    assert sum(a.info["config_type"] == "probe_md_flagged" for a in trained_on) == 3  # weighted by type
    validated_on = ase.io.read(out / "data" / "valid.extxyz", ":")
    assert len(validated_on) == 5 and validated_on[-1].info["config_type"] == "probe_md_flagged"
    assert "--config_type_weights={'probe_md_flagged': 3.0}" in (out / "mace_train.log").read_text()
    backbone = MaceBackbone.from_file(out / "model.pt")  # TorchScript in the project's format
    assert backbone.species == ("Cu",)
    assert (out / "retrained.model").is_file()  # the next round's foundation model
    assert (out / "model.pt.mace_config.json").is_file()  # ... or this TorchScript + config
    assert (out / "foundation.model").is_file() == (foundation_format == "torchscript")
    assert report["notes"] == []
    assert (out / "head.pt").is_file() and (out / "head_before_calibration.pt").is_file()
    # one held-out frame cannot calibrate anything: said so, and the trained head is kept
    assert report["head"]["recalibration"].startswith("skipped: recalibration needs at least 20 labelled frames")
    assert (out / "head.pt").read_bytes() == (out / "head_before_calibration.pt").read_bytes()
    assert json.loads((out / "retrain_report.json").read_text())["frames"]["new_train"] == 3
    assert report["files"]["fused"] == str(out / "fused.pt")  # head refitted + export on: always fused
    assert read_fused_metadata(out / "fused.pt")["threshold"] == pytest.approx(0.3)
    assert "new (held out)" in format_report(report)


def test_bad_calibration_data_is_refused_before_any_work(tmp_path, tiny_pickled_model, cu_extxyz, monkeypatch, capsys):
    import probe_md.loop.retrain as retrain_module

    monkeypatch.setattr(retrain_module, "trainable_foundation",
                        lambda *a, **k: pytest.fail("work started before the calibration data was checked"))
    new = write(tmp_path / "new.extxyz", rattled_cu(2, seed=1, size=1))
    few = write(tmp_path / "few.extxyz", rattled_cu(8, seed=2, size=1))

    def config(**fields):
        return RetrainConfig(foundation_model=tiny_pickled_model, new_data=[new], out_dir=tmp_path / "r", **fields)

    with pytest.raises(ValueError, match="calibration data recalibrates the refitted head: give head data too"):
        retrain(config(calibration_data=[few]))
    with pytest.raises(FileNotFoundError, match="calibration data .*missing.extxyz does not exist"):
        retrain(config(head_data=[cu_extxyz], calibration_data=[tmp_path / "missing.extxyz"]))
    with pytest.raises(ValueError, match="at least 20 labelled frames, got 8"):
        retrain(config(head_data=[cu_extxyz], calibration_data=[few]))
    from probe_md.cli.main import main

    assert main(["retrain", "--new-data", str(new), "-o", str(tmp_path / "r"), "--foundation-model",
                 str(tiny_pickled_model), "--head-data", str(cu_extxyz), "--calibration-data", str(few)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 20 labelled frames, got 8" in err


def test_unwritable_out_dir_is_refused_before_any_work(tmp_path, tiny_pickled_model, monkeypatch, capsys):
    import probe_md.loop.retrain as retrain_module
    from probe_md.cli.main import main

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(retrain_module, "trainable_foundation", must_not_run)
    monkeypatch.setattr(retrain_module, "run_mace_train", must_not_run)
    new = write(tmp_path / "new.extxyz", rattled_cu(2, seed=1, size=1))
    (tmp_path / "afile").write_text("x")  # a folder under a regular file is unwritable even for root
    out = tmp_path / "afile" / "round1"
    with pytest.raises(ValueError, match=r"cannot write retrain output folder .*afile is a file, not a folder"):
        retrain(RetrainConfig(foundation_model=tiny_pickled_model, new_data=[new], out_dir=out))
    assert main(["retrain", "--new-data", str(new), "-o", str(out), "--foundation-model", str(tiny_pickled_model)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_defaults_are_the_config_defaults_the_readme_reports_working(tmp_path):
    import argparse
    import dataclasses

    from probe_md.cli import retrain_cmd

    parser = argparse.ArgumentParser()
    retrain_cmd.add_arguments(parser)
    args = parser.parse_args(["--new-data", "n.extxyz", "-o", str(tmp_path)])
    config_defaults = {f.name: f.default for f in dataclasses.fields(RetrainConfig)}
    option_to_field = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "ema_decay": "ema_decay",
                       "seed": "seed", "device": "device", "energy_weight": "energy_weight",
                       "forces_weight": "forces_weight", "stress_weight": "stress_weight",
                       "new_frame_weight": "new_frame_weight", "holdout_fraction": "holdout_fraction",
                       "new_valid_fraction": "new_valid_fraction", "max_old": "max_old_frames",
                       "threshold": "head_threshold", "head_max_epochs": "head_max_epochs"}
    for option, name in option_to_field.items():
        assert getattr(args, option) == config_defaults[name], option
    # README "Closing the loop": 5 epochs, lr 3e-4 and energy weight 1 left the error 5x over the
    # threshold; the round that worked used 40 epochs, lr 2e-3 and the default's stage-two weights.
    assert (args.epochs, args.lr, args.energy_weight, args.stress_weight) == (40, 2e-3, 1000.0, 1000.0)
    assert (args.new_frame_weight, args.new_valid_fraction) == (5.0, 0.15)


def carved(structures, seed: int, buffer_shift: float = 0.0):
    """Carved-like copies: two core atoms each; buffer labels (forces, energy) shifted by buffer_shift."""
    rng = np.random.default_rng(seed)
    pieces = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.arrays["probe_core"] = np.arange(len(atoms)) < 2
        atoms.arrays["REF_forces"][2:] += buffer_shift * rng.normal(size=(len(atoms) - 2, 3))
        atoms.info["REF_energy"] += 10 * buffer_shift
        pieces.append(atoms)
    return pieces


def test_retrain_on_carved_structures_fits_core_forces_only(tmp_path, tiny_pickled_model):
    """Carved new frames go through the atom-weighted fine-tune: buffer labels and carved
    energies change nothing in the retrained model; errors are reported on core atoms."""
    base = rattled_cu(4, seed=21, amplitude=(0.2, 0.3), size=1)
    old = write(tmp_path / "old.extxyz", rattled_cu(4, seed=22, amplitude=(0.01, 0.1), size=1))
    models = []
    for name, shift in (("a", 0.0), ("b", 1.0)):
        new = write(tmp_path / f"new_{name}.extxyz", carved(base, seed=3, buffer_shift=shift))
        report = retrain(RetrainConfig(foundation_model=tiny_pickled_model, new_data=[new], old_data=[old],
                                       out_dir=tmp_path / name, epochs=2, batch_size=4, stress_weight=0.0))
        models.append(torch.load(tmp_path / name / "retrained.model", weights_only=False).state_dict())
    assert report["trainer"].startswith("probe_md.loop.core_finetune")
    trained_on = ase.io.read(tmp_path / "b" / "data" / "train.extxyz", ":")
    new_frames = [a for a in trained_on if "probe_core" in a.arrays]
    assert len(new_frames) == 2 and all(a.info["config_energy_weight"] == 0.0 for a in new_frames)
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert np.isnan(report["errors_after"]["new_holdout"]["energy_rmse_ev_per_atom"])  # carved: energies skipped


def test_carved_structures_stay_out_of_the_head_pool(tmp_path):
    (tmp_path / "data").mkdir()
    whole = rattled_cu(1, seed=31, size=1)
    pieces = carved(rattled_cu(1, seed=32, size=1), seed=0)
    write(tmp_path / "data" / "new_train.extxyz", whole + pieces)  # one round may mix both
    config = RetrainConfig(foundation_model=tmp_path / "x.model", new_data=[tmp_path / "new.extxyz"],
                           out_dir=tmp_path, head_data=[tmp_path / "pool.extxyz"])
    paths = head_pool_paths(config, tmp_path)
    assert paths == [tmp_path / "pool.extxyz", tmp_path / "data" / "head_new_frames.extxyz"]
    kept = ase.io.read(paths[1], ":")
    assert len(kept) == 1 and "probe_core" not in kept[0].arrays
    np.testing.assert_allclose(kept[0].positions, whole[0].positions, atol=1e-7)  # extxyz precision
