"""The `probe-md` entry point as a whole: version, help texts, one-line errors, quiet imports."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from importlib import metadata

import pytest

from probe_md.cli.main import SUBCOMMANDS, main

# run and demo live with the LAMMPS driver and are checked there.
CHECKED_COMMANDS = [name for name in SUBCOMMANDS if name not in ("run", "demo")]


def test_version_is_the_installed_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"probe-md {metadata.version('probe-md')}\n"


@pytest.mark.parametrize("name", CHECKED_COMMANDS)
def test_every_option_has_a_help_text(name):
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    missing = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert missing == [], f"probe-md {name}: options without help: {missing}"


def test_empty_head_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["export", "--head", str(empty), "-o", str(tmp_path / "fused.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"head file {empty} is empty" in err and "probe-md train" in err
    assert not (tmp_path / "fused.pt").exists()


def test_convert_output_is_checked_before_loading(tmp_path, capsys, monkeypatch):
    from probe_md.backbone.mace import MaceBackbone

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("model loaded before the output path was checked")

    monkeypatch.setattr(MaceBackbone, "from_file", must_not_load)
    (tmp_path / "afile").write_text("x")  # a path under a regular file is unwritable even for root
    out = tmp_path / "afile" / "model.pt"
    assert main(["convert-mace", str(tmp_path / "trusted.model"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write TorchScript file {out}" in err


def test_no_cuequivariance_notice_on_a_command_that_loads_mace(tmp_path):
    # mace prints the notice on its first import, so this needs a fresh interpreter.
    command = [sys.executable, "-m", "probe_md.cli.main", "export", "--head", str(tmp_path / "missing.pt"),
               "-o", str(tmp_path / "fused.pt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "missing.pt does not exist" in done.stderr
    assert "cuequivariance or cuequivariance_torch is not available" not in done.stdout + done.stderr


def _defaults(name: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_come_from_the_dataclasses():
    from probe_md.evaluation import EvaluateRequest
    from probe_md.pipeline import TrainRequest
    from probe_md.structures import ReferenceKeys
    from probe_md.training import TrainingConfig

    train = _defaults("train", ["--data", "d.extxyz", "-o", "h.pt"])
    assert (train.criterion, train.threshold, train.in_domain) == (
        TrainRequest.criterion, TrainRequest.threshold, TrainRequest.in_domain_path)
    assert (train.max_epochs, train.seed) == (TrainingConfig.max_epochs, TrainingConfig.seed)
    assert train.force_norm is TrainRequest.force_norm is True
    assert _defaults("train", ["--data", "d.extxyz", "-o", "h.pt", "--no-force-norm"]).force_norm is False
    assert (train.energy_key, train.forces_key) == (ReferenceKeys.energy, ReferenceKeys.forces)
    evaluate = _defaults("evaluate", [])
    assert (evaluate.criterion, evaluate.threshold) == (EvaluateRequest.criterion, EvaluateRequest.threshold)


def test_feature_cache_lives_in_the_one_cache_root(monkeypatch, tmp_path):
    from probe_md.cache import cache_root

    monkeypatch.setenv("PROBE_MD_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    assert _defaults("evaluate", []).cache_dir == tmp_path / "cache" / "features"
    monkeypatch.delenv("PROBE_MD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _defaults("train", ["--data", "d", "-o", "h"]).cache_dir == tmp_path / "xdg" / "probe-md" / "features"
    from probe_md.lammps.build import cache_root as plugin_cache_root  # the plugin build shares the root

    assert plugin_cache_root() == cache_root() == tmp_path / "xdg" / "probe-md"
