import numpy as np

from probe_md.backbone.mace import MaceBackbone
from probe_md.features import cache_key, predict_dataset


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
