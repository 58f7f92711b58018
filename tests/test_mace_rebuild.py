"""probe_md.backbone.mace_rebuild: TorchScript + config -> the same trainable mace-torch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.backbone.mace_rebuild import (
    config_sidecar,
    mace_config_to_json,
    python_model_from_torchscript,
    rebuild_mace_model,
)

from conftest import rattled_cu


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """(model, path); jit compilation changes the python model in place, so describe it before."""
    model = build_mace_model(seed=3, num_channels=8, num_layers=2, correlation=2)
    path = tmp_path_factory.mktemp("rebuild") / "tiny.pt"
    save_mace_model(model, path)
    return model, path


def test_save_writes_a_config_sidecar(saved_tiny):
    _, path = saved_tiny
    description = json.loads(config_sidecar(path).read_text())
    assert description["model_class"] == "ScaleShiftMACE"
    assert description["config"]["hidden_irreps"] == "8x0e+8x1o"
    assert description["config"]["interaction_cls"].startswith("mace.modules.blocks:")


def test_rebuilt_model_predicts_exactly_like_the_torchscript(saved_tiny, tmp_path):
    _, path = saved_tiny
    rebuilt = python_model_from_torchscript(path)
    assert type(rebuilt).__name__ == "ScaleShiftMACE"
    assert all(p.requires_grad for p in rebuilt.parameters())  # trainable, unlike the TorchScript
    pickled = tmp_path / "rebuilt.model"
    torch.save(rebuilt, pickled)
    structures = rattled_cu(3, seed=4, size=1)
    for a, b in zip(MaceBackbone.from_file(path).predict(structures),
                    MaceBackbone.from_file(pickled, allow_pickle=True).predict(structures)):
        assert a.energy == pytest.approx(b.energy, abs=1e-10)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
        np.testing.assert_allclose(a.features, b.features, atol=1e-10)


def test_rebuild_refuses_classes_outside_mace():
    model = build_mace_model(seed=3, num_channels=8, num_layers=1, correlation=1)  # not yet compiled
    description = mace_config_to_json(model)
    description["config"]["interaction_cls"] = "os:system"
    with pytest.raises(ValueError, match="outside mace.modules"):
        rebuild_mace_model(description, model.state_dict())
    description = mace_config_to_json(model)
    description["config"]["gate"] = "exec"
    with pytest.raises(ValueError, match="gate 'exec'"):
        rebuild_mace_model(description, model.state_dict())


def test_missing_sidecar_names_the_fix(tmp_path, saved_tiny):
    _, path = saved_tiny
    bare = tmp_path / "bare.pt"
    bare.write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="bare.pt.mace_config.json"):
        python_model_from_torchscript(bare)


def test_embedded_default_is_retrainable():
    from probe_md import defaults

    assert config_sidecar(defaults.default_model_path()).is_file()
    model = python_model_from_torchscript(defaults.default_model_path())
    assert [int(z) for z in model.atomic_numbers] == [29]
    for path in (defaults.default_mlip_train_path(), defaults.default_mlip_valid_path(),
                 defaults.default_head_pool_path()):
        assert path.stat().st_size > 10_000
