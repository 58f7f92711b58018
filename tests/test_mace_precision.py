"""probe_md.backbone.mace_precision: a float64 MACE run in float32 agrees with itself to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from probe_md.ase import ProbeCalculator
from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.backbone.mace_precision import cast_backbone

# Tolerances are ~10x the worst float32-vs-float64 difference measured on `_cells()`
# (tiny model: r_max 3.2, seed 0; largest |force| 0.8 eV/Å):
# relative energy 1.24e-7, force 2.18e-6 eV/Å, feature 1.18e-6, stress 3.7e-8 eV/Å³.
ENERGY_RTOL = 1e-6
FORCE_ATOL_EV_PER_A = 2e-5
FEATURE_ATOL = 1e-5
STRESS_ATOL_EV_PER_A3 = 4e-7
# Shipped model and head on `_cells()`: reliability 2.1e-6 (at p = 0.024, near the threshold),
# logit 1.9e-4 (at logit -38.6).
RELIABILITY_ATOL = 2e-5
LOGIT_ATOL = 2e-3
# Far from the threshold the logit is a big margin (-242 for the hottest cell): float32's
# relative error counts there (1.5e-5 measured for it; 2e-6 to 1.6e-5 for the others).
LOGIT_RTOL = 5e-5


def _cells():
    """Rattled fcc Cu: three 2x2x2 cubic cells (32 atoms), two 3x3x3 ones (108 atoms)."""
    cells = []
    for size, amplitude, seed in [(2, 0.05, 0), (2, 0.2, 1), (2, 0.35, 2), (3, 0.1, 3), (3, 0.3, 4)]:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size)
        atoms.rattle(amplitude, seed=seed)
        cells.append(atoms)
    return cells


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "tiny_r3.2.pt"
    save_mace_model(build_mace_model(r_max=3.2, seed=0, dtype=torch.float64), path)
    return path


@pytest.fixture(scope="module")
def float64_backbone(tiny_path):
    return MaceBackbone.from_file(tiny_path)


@pytest.fixture(scope="module")
def float32_backbone(float64_backbone):
    return cast_backbone(float64_backbone, "float32")


def test_float32_matches_float64(float64_backbone, float32_backbone):
    for index, atoms in enumerate(_cells()):
        reference = float64_backbone.forward_batch([atoms], compute_stress=True)
        cast = float32_backbone.forward_batch([atoms], compute_stress=True)
        message = f"cell {index} ({len(atoms)} atoms)"
        np.testing.assert_allclose(cast["energy"].double(), reference["energy"], rtol=ENERGY_RTOL, err_msg=message)
        np.testing.assert_allclose(cast["forces"].double(), reference["forces"], rtol=0,
                                   atol=FORCE_ATOL_EV_PER_A, err_msg=message)
        np.testing.assert_allclose(cast["features"].double(), reference["features"], rtol=0,
                                   atol=FEATURE_ATOL, err_msg=message)
        np.testing.assert_allclose(cast["stress"].double(), reference["stress"], rtol=0,
                                   atol=STRESS_ATOL_EV_PER_A3, err_msg=message)


def test_cast_model_really_is_float32(float64_backbone, float32_backbone):
    assert float32_backbone.metadata.dtype == "float32" and float32_backbone.dtype == torch.float32
    assert {p.dtype for p in float32_backbone.model.parameters()} == {torch.float32}
    assert {b.dtype for b in float32_backbone.model.buffers() if b.is_floating_point()} == {torch.float32}
    out = float32_backbone.forward_batch(_cells()[:1], compute_stress=True)
    assert {out[k].dtype for k in ("energy", "forces", "features", "stress")} == {torch.float32}
    assert out["node_energy"].dtype == torch.float64  # mace's ScaleShiftMACE widens node energies itself
    assert float32_backbone.metadata.feature_columns == float64_backbone.metadata.feature_columns
    assert float32_backbone.feature_dim == float64_backbone.feature_dim
    # The source backbone is untouched, and feature caches of the two precisions never mix.
    assert {p.dtype for p in float64_backbone.model.parameters()} == {torch.float64}
    assert float64_backbone.metadata.dtype == "float64"
    assert float32_backbone.fingerprint != float64_backbone.fingerprint


def test_casting_back_to_float64_is_allowed(float32_backbone):
    """float32 -> float64 works: float64 arithmetic on the float32-rounded weights."""
    widened = cast_backbone(float32_backbone, "float64")
    assert widened.metadata.dtype == "float64"
    for narrow, wide in zip(float32_backbone.model.parameters(), widened.model.parameters()):
        assert wide.dtype == torch.float64
        assert torch.equal(wide, narrow.double())
    atoms = _cells()[3]
    narrow_out = float32_backbone.forward_batch([atoms])
    wide_out = widened.forward_batch([atoms])
    assert wide_out["forces"].dtype == torch.float64
    np.testing.assert_allclose(wide_out["energy"], narrow_out["energy"].double(), rtol=ENERGY_RTOL)
    np.testing.assert_allclose(wide_out["forces"], narrow_out["forces"].double(), rtol=0, atol=FORCE_ATOL_EV_PER_A)


def test_same_dtype_returns_the_backbone_itself(float64_backbone):
    assert cast_backbone(float64_backbone, "float64") is float64_backbone


def test_bad_dtype_is_a_one_line_error(float64_backbone, tiny_path):
    with pytest.raises(ValueError, match="dtype 'float16' is not supported: use one of float32, float64"):
        cast_backbone(float64_backbone, "float16")
    with pytest.raises(ValueError, match="dtype 'fp32' is not supported"):
        ProbeCalculator(tiny_path, dtype="fp32")


def test_probe_calculator_float32_reliability_matches_float64():
    """Shipped model and head: reliabilities from 0.94 to ~0 (logits +2.8 to -242)."""
    reference_calc, cast_calc = ProbeCalculator(), ProbeCalculator(dtype="float32")
    assert cast_calc.backbone.dtype == torch.float32
    assert {p.dtype for p in cast_calc.head.parameters()} == {torch.float32}
    for index, atoms in enumerate(_cells()):
        results = []
        for calc in (reference_calc, cast_calc):
            atoms = atoms.copy()
            atoms.calc = calc
            results.append((calc.get_property("reliability", atoms), calc.get_property("reliability_logit", atoms)))
        (p64, logit64), (p32, logit32) = results
        assert p32 == pytest.approx(p64, abs=RELIABILITY_ATOL), f"cell {index}"
        assert logit32 == pytest.approx(logit64, abs=LOGIT_ATOL, rel=LOGIT_RTOL), f"cell {index}"
