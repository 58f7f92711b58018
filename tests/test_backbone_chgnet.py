import numpy as np
import pytest

from probe_md.backbone.chgnet import CHGNET_AVAILABLE

if not CHGNET_AVAILABLE:
    pytest.skip(
        "chgnet is not installed: `pip install -e '.[test]'` brings it on Python < 3.13 (chgnet has no "
        "3.13 wheel), else `pip install chgnet`",
        allow_module_level=True,
    )

import torch
from ase import Atoms
from ase.build import bulk

from probe_md.backbone import Backbone
from probe_md.backbone.chgnet import CHGNetBackbone, is_chgnet_file, save_chgnet_model
from backbone_contract import check_batching_and_forces, check_invariances  # noqa: E402


def build_tiny_chgnet(seed: int = 0):
    """A randomly initialised CHGNet, small enough for unit tests."""
    from chgnet.model import CHGNet

    torch.manual_seed(seed)
    return CHGNet(
        atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8, num_radial=5, num_angular=5, n_conv=2,
        atom_conv_hidden_dim=8, bond_conv_hidden_dim=8, mlp_hidden_dims=[8],
        composition_model=None, atom_graph_cutoff=4.0, bond_graph_cutoff=2.6,
    )


def _cell(seed=0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def tiny_chgnet_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_chgnet.pt"
    save_chgnet_model(build_tiny_chgnet(), path)
    return path


def test_contract_and_save_load_roundtrip(tiny_chgnet_path):
    backbone = CHGNetBackbone.from_file(tiny_chgnet_path)
    assert isinstance(backbone, Backbone)
    assert backbone.cutoff == 4.0 and backbone.num_layers == 2 and backbone.feature_dim == 8
    assert {"Si", "O", "Cu"} <= set(backbone.species)
    in_memory = CHGNetBackbone(build_tiny_chgnet())
    assert in_memory.fingerprint == backbone.fingerprint
    assert CHGNetBackbone(build_tiny_chgnet(seed=1)).fingerprint != backbone.fingerprint
    structures = [_cell(1), _cell(2)]
    for a, b in zip(in_memory.predict(structures), backbone.predict(structures)):
        assert a.features.shape == (8, 8) and a.forces.shape == (8, 3)
        assert abs(a.energy - b.energy) < 1e-6
        np.testing.assert_allclose(a.features, b.features, atol=1e-6)


def test_batched_equals_single_and_forces_are_gradients(tiny_chgnet_path):
    backbone = CHGNetBackbone.from_file(tiny_chgnet_path, batch_size=2)
    # CHGNet runs in float32: central differences with a step large enough for its precision.
    check_batching_and_forces(
        backbone, [_cell(3), _cell(4), _cell(5)], tol=1e-5, fd_step=1e-2,
        fd_tol=lambda force: 1e-3 + 0.02 * abs(force),
    )


def test_features_invariant_to_rotation_translation_permutation(tiny_chgnet_path):
    check_invariances(CHGNetBackbone.from_file(tiny_chgnet_path), _cell(6), tol=1e-4)


def test_file_detection_and_one_line_errors(tmp_path, tiny_chgnet_path, tiny_mace_path):
    assert is_chgnet_file(tiny_chgnet_path)
    assert not is_chgnet_file(tiny_mace_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    assert not is_chgnet_file(garbage)
    with pytest.raises(ValueError, match="is not a CHGNet checkpoint"):
        CHGNetBackbone.from_file(tiny_mace_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CHGNetBackbone.from_file(tmp_path / "nope.pt")
    molecule = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 2.3]])
    with pytest.raises(ValueError, match="structure 0 is not periodic"):
        CHGNetBackbone.from_file(tiny_chgnet_path).predict([molecule])


def test_atom_without_neighbours_still_gets_a_prediction(tiny_chgnet_path):
    lonely = Atoms("Si", cell=[7.0, 7.0, 7.0], pbc=True)  # nearest image 7 Å > 4 Å cutoff
    (prediction,) = CHGNetBackbone.from_file(tiny_chgnet_path).predict([lonely])
    assert np.isfinite(prediction.energy) and prediction.features.shape == (1, 8)
    np.testing.assert_allclose(prediction.forces, 0.0, atol=1e-6)
