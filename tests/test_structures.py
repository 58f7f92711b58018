import ase.io
import numpy as np
import pytest
from ase.build import bulk

from probe_md.structures import ReferenceKeys, read_structures


def test_reads_labelled_file(cu_extxyz):
    structures = read_structures(cu_extxyz)
    assert len(structures) == 24 and "REF_forces" in structures[0].arrays


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_structures(tmp_path / "none.extxyz")
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_structures(empty)
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is\nnot xyz\n")
    with pytest.raises(ValueError, match="could not be read"):
        read_structures(garbage)


def test_missing_keys_name_the_key(tmp_path, cu_structures):
    path = tmp_path / "nolabels.extxyz"
    ase.io.write(path, [bulk("Cu", "fcc", a=3.6)])
    with pytest.raises(ValueError, match=r"structure 0 has no reference energy info\['REF_energy'\]"):
        read_structures(path)
    with pytest.raises(ValueError, match=r"arrays\['my_forces'\]"):
        read_structures(_write(tmp_path, cu_structures[:2]), ReferenceKeys(forces="my_forces"))
    assert len(read_structures(path, keys=None)) == 1


def _write(folder, structures):
    path = folder / "labelled.extxyz"
    ase.io.write(path, structures)
    return path


def test_nan_positions_rejected(tmp_path, cu_structures):
    bad = cu_structures[0].copy()
    bad.info.update(cu_structures[0].info)
    bad.positions[3] = np.nan
    path = tmp_path / "nan.extxyz"
    ase.io.write(path, [cu_structures[1], bad])
    with pytest.raises(ValueError, match="structure 1 has NaN or infinite positions"):
        read_structures(path)
