"""probe_md.io_utils: output locations checked before work, atomic writes, fsync'ed appends."""

from __future__ import annotations

import pytest

from probe_md.io_utils import append_and_fsync, check_output_path


def test_check_output_path_creates_the_folder_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.pt"
    assert check_output_path(target, "output file") == target
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []


def test_path_under_a_regular_file_names_that_file(tmp_path):
    # Unwritable even for root: a folder cannot be made where a file is.
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile" / "x.pt", tmp_path / "afile" / "sub" / "x.pt"):
        with pytest.raises(ValueError, match=r"cannot write output file .*x.pt \(.*afile is a file, not a folder\)"):
            check_output_path(target, "output file")
    with pytest.raises(ValueError, match="cannot write plots folder"):
        check_output_path(tmp_path / "afile" / "plots", "plots folder", is_folder=True)


def test_existing_folder_is_not_a_file_name(tmp_path):
    with pytest.raises(ValueError, match="is a folder: give a file name"):
        check_output_path(tmp_path, "output file")
    assert check_output_path(tmp_path, "output folder", is_folder=True) == tmp_path


def test_append_and_fsync_appends_whole_records(tmp_path):
    path = tmp_path / "records.txt"
    append_and_fsync(path, b"first\n")  # creates the file
    append_and_fsync(path, b"second\n" * 100_000)
    assert path.read_bytes() == b"first\n" + b"second\n" * 100_000
