import numpy as np

from probe_md.backbone.mace import MaceBackbone
from probe_md.features import cache_key, head_inputs, predict_dataset
from probe_md.head import FORCE_NORM_OFFSET


def test_cache_round_trip_and_invalidation(tiny_mace_path, cu_structures, tmp_path):
    backbone = MaceBackbone.from_file(tiny_mace_path)
    structures = cu_structures[:5]
    first = predict_dataset(backbone, structures, tmp_path, progress=False)
    assert len(list(tmp_path.glob("predictions-*.npz"))) == 1
    second = predict_dataset(backbone, structures, tmp_path, progress=False)
    for a, b in zip(first, second):
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.features, b.features)
    moved = [a.copy() for a in structures]
    moved[0].positions[0, 0] += 0.01
    assert cache_key(backbone, moved) != cache_key(backbone, structures)


def test_head_inputs_append_the_force_norm_only_for_heads_that_read_it(tiny_mace_path, cu_structures):
    predictions = MaceBackbone.from_file(tiny_mace_path).predict(cu_structures[:2])
    plain = head_inputs(predictions, reads_force_norm=False)
    assert all(a is p.features for a, p in zip(plain, predictions))
    with_norm = head_inputs(predictions, reads_force_norm=True)
    for inputs, prediction in zip(with_norm, predictions):
        np.testing.assert_array_equal(inputs[:, :-1], prediction.features)
        np.testing.assert_allclose(inputs[:, -1], np.log(np.linalg.norm(prediction.forces, axis=1) + FORCE_NORM_OFFSET),
                                   rtol=1e-6)
