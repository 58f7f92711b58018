import numpy as np
import pytest
import torch
from ase.build import bulk

from probe_md.backbone import Backbone
from probe_md.backbone.mace import MaceBackbone, invariant_feature_columns, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from backbone_contract import check_batching_and_forces, check_invariances


def _cell(seed=0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=seed)
    return atoms


def test_contract_and_feature_layout(tiny_mace_path):
    backbone = MaceBackbone.from_file(tiny_mace_path)
    assert isinstance(backbone, Backbone)
    assert backbone.species == ("Cu",) and backbone.num_layers == 2 and backbone.cutoff == 4.0
    # 8x0e+8x1o then 8x0e: scalars are columns 0-7 and 32-39 of node_feats (width 40).
    assert backbone.metadata.feature_columns == list(range(8)) + list(range(32, 40))
    assert backbone.feature_dim == 16


def test_torchscript_save_load_matches_python_model(tmp_path):
    model = build_mace_model(seed=5)
    path = tmp_path / "m.pt"
    metadata = save_mace_model(model, path)
    python_backbone = MaceBackbone(model, metadata, "python")
    loaded = MaceBackbone.from_file(path)
    structures = [_cell(1), _cell(2)]
    for a, b in zip(python_backbone.predict(structures), loaded.predict(structures)):
        assert abs(a.energy - b.energy) < 1e-10
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
        np.testing.assert_allclose(a.features, b.features, atol=1e-10)


def test_batched_equals_single_and_forces_are_gradients(tiny_mace_path):
    backbone = MaceBackbone.from_file(tiny_mace_path, batch_size=2)
    check_batching_and_forces(
        backbone, [_cell(3), _cell(4), _cell(5)], tol=1e-10, fd_step=1e-5, fd_tol=lambda f: 1e-5
    )


def test_features_invariant_to_rotation_translation_permutation(tiny_mace_path):
    check_invariances(MaceBackbone.from_file(tiny_mace_path), _cell(6), tol=1e-9)


def test_bad_model_files(tmp_path, tiny_mace_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MaceBackbone.from_file(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="neither TorchScript"):
        MaceBackbone.from_file(corrupt)
    pickled = tmp_path / "pickled.model"
    torch.save(build_mace_model(seed=1), pickled)
    with pytest.raises(ValueError, match="pickle"):
        MaceBackbone.from_file(pickled)
    assert MaceBackbone.from_file(pickled, allow_pickle=True).feature_dim == 16
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_mace_path.read_bytes()[:5000])
    with pytest.raises(ValueError):
        MaceBackbone.from_file(truncated)


def test_species_mismatch_is_one_line(tiny_mace_path):
    backbone = MaceBackbone.from_file(tiny_mace_path)
    gold = bulk("Au", "fcc", a=4.08)
    with pytest.raises(ValueError, match=r"structure 0 contains Au, but the MACE model .* knows only \[Cu\]"):
        backbone.predict([gold])


def test_invariant_columns_of_three_layer_model():
    model = build_mace_model(num_channels=4, max_L=2, num_layers=3)
    columns, width = invariant_feature_columns(model)
    # per layer 4x0e+4x1o+4x2e = 36 wide, last layer 4x0e
    assert width == 36 + 36 + 4
    assert columns == list(range(4)) + list(range(36, 40)) + list(range(72, 76))


def test_empty_model_file_says_so(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"MACE model file .*empty.pt is empty: write it again"):
        MaceBackbone.from_file(empty)


def test_batches_respect_the_structure_count_and_the_atom_budget():
    from ase import Atoms

    from probe_md.backbone.mace import atom_budget_batches

    sizes = [10, 10, 4000, 30, 30, 30, 5000, 1]
    structures = [Atoms("Cu" * n) for n in sizes]
    batches = atom_budget_batches(structures, max_structures=2, max_atoms=4096)
    assert [[len(a) for a in batch] for batch in batches] == [[10, 10], [4000, 30], [30, 30], [5000], [1]]
    assert [a for batch in batches for a in batch] == structures  # order kept, nothing lost
