import numpy as np
import pytest
import torch
from ase.build import bulk

from probe_md.ase import ProbeCalculator
from probe_md.backbone.mace import MaceBackbone
from probe_md.features import head_inputs
from probe_md.head import HeadConfig, ProbeHead
from probe_md.training import HeadInfo, save_head


@pytest.fixture(scope="module")
def calculator(tiny_mace_path, tmp_path_factory):
    torch.manual_seed(0)
    backbone = MaceBackbone.from_file(tiny_mace_path)
    # a head that also reads the MLIP's force norm, as `probe-md train` makes by default
    head = ProbeHead(HeadConfig(feature_dim=backbone.feature_dim + 1, dropout=0.0, reads_force_norm=True)).eval()
    path = tmp_path_factory.mktemp("head") / "head.pt"
    save_head(head, HeadInfo("force-rmse", 0.1, backbone.fingerprint), path)
    return ProbeCalculator(tiny_mace_path, path)


def _atoms(seed=0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=seed)
    return atoms


def test_results_present(calculator):
    atoms = _atoms()
    atoms.calc = calculator
    p = atoms.calc.get_property("reliability", atoms)
    assert 0.0 < p < 1.0
    importance = atoms.calc.get_property("importance", atoms)
    assert importance.shape == (len(atoms),) and abs(importance.mean() - 1.0) < 1e-9
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_stress().shape == (6,)


def test_reliability_is_the_heads_on_features_and_force_norms(calculator, tiny_mace_path):
    atoms = _atoms(3)
    atoms.calc = calculator
    prediction = MaceBackbone.from_file(tiny_mace_path).predict([atoms])[0]
    head = calculator.head
    with torch.no_grad():
        inputs = torch.tensor(head_inputs([prediction], reads_force_norm=True)[0], dtype=head.feature_mean.dtype)
        out = head(inputs, torch.zeros(len(atoms), dtype=torch.long), 1)
    assert atoms.calc.get_property("reliability_logit", atoms) == pytest.approx(float(out.logits[0]), abs=1e-5)
    without = torch.tensor(prediction.features, dtype=head.feature_mean.dtype)
    assert inputs.shape[1] == without.shape[1] + 1  # the force norm is the last column


def test_probability_invariant_to_rotation_translation_permutation(calculator):
    atoms = _atoms(1)
    atoms.calc = calculator
    p = atoms.calc.get_property("reliability", atoms)
    importance = atoms.calc.get_property("importance", atoms)
    moved = atoms.copy()
    moved.rotate(50, "y", rotate_cell=True)
    moved.translate([1.0, 2.0, -0.5])
    moved.calc = calculator
    assert moved.calc.get_property("reliability", moved) == pytest.approx(p, abs=1e-10)
    order = np.random.default_rng(1).permutation(len(atoms))
    permuted = atoms[order]
    permuted.calc = calculator
    assert permuted.calc.get_property("reliability", permuted) == pytest.approx(p, abs=1e-10)
    np.testing.assert_allclose(permuted.calc.get_property("importance", permuted), importance[order], atol=1e-9)


def test_stress_matches_finite_difference(calculator):
    atoms = _atoms(2)
    atoms.calc = calculator
    stress = atoms.get_stress(voigt=False)
    step = 1e-5
    volume = atoms.get_volume()
    for i, j in [(0, 0), (1, 2)]:
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            deformation = np.eye(3)
            deformation[i, j] += sign * step
            strained.set_cell(atoms.cell @ deformation, scale_atoms=True)
            strained.calc = calculator
            energies.append(strained.get_potential_energy())
        # ASE convention: stress = (1/V) dE/d(strain)
        numeric = (energies[0] - energies[1]) / (2 * step) / volume
        assert numeric == pytest.approx(stress[i, j], abs=1e-5)


def test_nan_positions_give_one_line_error(calculator):
    atoms = _atoms()
    atoms.positions[0, 0] = np.nan
    atoms.calc = calculator
    with pytest.raises(ValueError, match="NaN or infinite positions"):
        atoms.get_potential_energy()


def test_the_embedded_heads_interval_stays_open_far_beyond_its_training_errors():
    """A 108-atom Cu cell rattled by 0.4 Å: SNAP's force RMSE against the default MACE is
    ~15 eV/Å, far above the largest error the head was trained on (3.2 eV/Å). The readout
    alone extrapolates to 3.9 (3.5-7.0) eV/Å and misses; the reported interval must be open
    above and start below the actual error."""
    from probe_md import defaults
    from probe_md.reference.cu_snap import cu_snap_calculator

    atoms = bulk("Cu", "fcc", a=3.636, cubic=True).repeat(3)
    atoms.rattle(0.4, seed=1)
    reference = atoms.copy()
    reference.calc = cu_snap_calculator()
    atoms.calc = ProbeCalculator(defaults.default_model_path(), defaults.DEFAULT_DIR / defaults.HEAD_FILE)
    actual = np.sqrt(np.mean((atoms.get_forces() - reference.get_forces()) ** 2))
    lower, upper = atoms.calc.results["predicted_error_interval"]
    assert actual > 10.0 and atoms.calc.results["reliability"] < 1e-3
    assert np.isinf(upper) and lower <= actual
    assert atoms.calc.results["predicted_error"] == pytest.approx(lower)  # both at the largest training error
