import numpy as np
import pytest
from ase import Atoms

from probe_md.backbone.base import StructurePrediction
from probe_md.reliability_labels import class_balance, default_threshold, label_reliable, structure_errors


def _pair():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    atoms.info["REF_energy"] = -7.0
    atoms.arrays["REF_forces"] = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    prediction = StructurePrediction(
        energy=-6.0, forces=np.array([[1.0, 0.3, 0.4], [-1.0, 0, 0]]), features=np.zeros((2, 1))
    )
    return atoms, prediction


def test_criteria_hand_computed():
    atoms, prediction = _pair()
    # deltas: atom 0 (0, .3, .4) -> |.|=0.5 ; atom 1 zero
    assert structure_errors([prediction], [atoms], "force-rmse")[0] == pytest.approx(np.sqrt(0.25 / 6))
    assert structure_errors([prediction], [atoms], "force-max")[0] == pytest.approx(0.5)
    assert structure_errors([prediction], [atoms], "energy-per-atom")[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown criterion"):
        structure_errors([prediction], [atoms], "virial")


def test_thresholds_and_balance():
    assert default_threshold(np.array([0.03, 0.04])) == pytest.approx(2 * np.sqrt((0.0009 + 0.0016) / 2))
    labels = label_reliable(np.array([0.01, 0.2, 0.05]), 0.1)
    assert labels.tolist() == [True, False, True]
    assert str(class_balance(labels)).startswith("2 reliable / 1 unreliable")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="threshold must be a positive"):
            label_reliable(np.array([0.1]), bad)
