"""probe_md.loop.collect: reading flagged frames, de-duplication, farthest-point sampling, provenance."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from probe_md.backbone.mace import MaceBackbone
from probe_md.cli.main import main
from probe_md.lammps.monitor import FLAGGED_FILE, frame_extxyz_text
from probe_md.loop.collect import (
    INFO_COLLECT_ORDER,
    INFO_RUN,
    collect_flagged,
    farthest_point_sampling,
    read_flagged_frames,
)


def cu_frame(seed: int, rattle: float = 0.05, strain: float = 0.0):
    atoms = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True).repeat(2)
    atoms.rattle(rattle, seed=seed)
    return atoms


def write_run(folder, frames, steps, reliabilities):
    """A run folder as the monitor writes it: flagged.extxyz with step/reliability/logit/importance."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FLAGGED_FILE, "w") as handle:
        for atoms, step, reliability in zip(frames, steps, reliabilities):
            handle.write(frame_extxyz_text(
                step, reliability, np.log(reliability / (1 - reliability)), atoms.get_chemical_symbols(),
                atoms.positions, atoms.cell.array, atoms.pbc, np.ones(len(atoms)),
            ))
    return folder


@pytest.fixture(scope="module")
def backbone(tiny_mace_path):
    return MaceBackbone.from_file(tiny_mace_path)


def test_farthest_point_sampling_picks_spread_out_points():
    points = np.array([[0.0], [0.1], [0.2], [10.0], [5.0], [9.9]])
    selected, _ = farthest_point_sampling(points, max_count=3, start=0)
    assert selected == [0, 3, 4]  # both ends first, then the middle; never the close neighbours


def test_farthest_point_sampling_stops_at_near_duplicates():
    points = np.array([[0.0], [1e-4], [1.0], [1.0 + 1e-4]])
    selected, nearest = farthest_point_sampling(points, min_distance=1e-2, start=0)
    assert selected == [0, 3]  # one of each pair: 1 and 2 are near-duplicates of those
    assert np.all(nearest < 1e-2)


def test_collect_drops_duplicates_and_keeps_provenance(tmp_path, backbone):
    distinct = [cu_frame(seed) for seed in range(4)]
    run_a = write_run(tmp_path / "run_a", distinct, [10, 20, 30, 40], [0.4, 0.1, 0.3, 0.2])
    copy = distinct[0].copy()
    near = distinct[2].copy()
    near.positions[0] += 1e-5  # a different file line, the same configuration for the model
    run_b = write_run(tmp_path / "run_b", [copy, near], [70, 80], [0.45, 0.35])

    result = collect_flagged([run_a, run_b], backbone, progress=False)

    assert result.read == 6
    assert result.exact_duplicates == 1
    assert result.near_duplicates == 1
    assert len(result.frames) == 4
    steps = {a.info["step"] for a in result.frames}
    assert steps - {30, 80} == {10, 20, 40} and len(steps & {30, 80}) == 1  # one of the near pair
    first = result.frames[0]
    assert first.info["step"] == 20 and first.info["reliability"] == pytest.approx(0.1)  # least reliable first
    assert first.info[INFO_RUN] == str(run_a)
    assert [a.info[INFO_COLLECT_ORDER] for a in result.frames] == [0, 1, 2, 3]
    for atoms in result.frames:
        assert {"step", "reliability", "logit", INFO_RUN} <= set(atoms.info)
        assert "importance" in atoms.arrays


def test_collect_max_prefers_the_outlier(tmp_path, backbone):
    cluster = [cu_frame(seed, rattle=0.01) for seed in range(5)]
    outlier = cu_frame(99, rattle=0.3, strain=0.08)
    run = write_run(tmp_path / "run", cluster + [outlier], list(range(6)), [0.1] + [0.4] * 5)
    result = collect_flagged([run], backbone, max_frames=2, progress=False)
    assert len(result.frames) == 2
    assert result.not_selected + result.near_duplicates == 4
    assert result.frames[1].info["step"] == 5  # the strained, strongly rattled frame


def test_frames_with_collapsed_atoms_are_dropped(tmp_path, backbone):
    collapsed = cu_frame(1)
    collapsed.positions[1] = collapsed.positions[0] + [0.4, 0.0, 0.0]  # an MD blow-up
    run = write_run(tmp_path / "run", [cu_frame(0), collapsed], [10, 20], [0.3, 0.1])
    result = collect_flagged([run], backbone, progress=False)
    assert result.unphysical == 1 and [a.info["step"] for a in result.frames] == [10]
    assert "1 with collapsed atoms" in result.summary()
    with pytest.raises(ValueError, match="collapsed atoms"):
        collect_flagged([write_run(tmp_path / "bad", [collapsed], [20], [0.1])], backbone, progress=False)
    kept = collect_flagged([run], backbone, progress=False, min_bond_fraction=0.0)
    assert kept.unphysical == 0 and len(kept.frames) == 2


def test_missing_flagged_file_is_a_warning_and_all_missing_an_error(tmp_path, backbone):
    run = write_run(tmp_path / "run", [cu_frame(0)], [10], [0.2])
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    result = collect_flagged([run, quiet], backbone, progress=False)
    assert len(result.frames) == 1 and result.frames_per_run[str(quiet)] == 0
    assert any("no flagged frames" in w for w in result.warnings)
    with pytest.raises(ValueError, match="no flagged frames in .*quiet"):
        collect_flagged([quiet], backbone, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_flagged([tmp_path / "nope"], backbone, progress=False)


def test_torn_last_frame_is_skipped_with_a_warning(tmp_path):
    run = write_run(tmp_path / "run", [cu_frame(0), cu_frame(1)], [10, 20], [0.2, 0.3])
    text = (run / FLAGGED_FILE).read_text()
    with open(run / FLAGGED_FILE, "a") as handle:
        handle.write(text[: len(text) // 3])  # a run killed mid-write
    frames, warning = read_flagged_frames(run)
    assert [a.info["step"] for a in frames] == [10, 20]
    assert warning and "stopped reading after 2 frames" in warning


def test_collect_cli_writes_the_pool(tmp_path, tiny_mace_path, capsys):
    run = write_run(tmp_path / "run", [cu_frame(s) for s in range(3)], [10, 20, 30], [0.3, 0.2, 0.1])
    pool = tmp_path / "pool.extxyz"
    code = main(["collect", str(run), "-o", str(pool), "--max", "2", "--model", str(tiny_mace_path), "--no-progress"])
    assert code == 0
    frames = ase.io.read(pool, ":")
    assert [a.info["step"] for a in frames][0] == 30
    assert len(frames) == 2 and all(a.info[INFO_RUN] == str(run) for a in frames)
    assert "kept 2" in capsys.readouterr().out
    assert main(["collect", str(run), "-o", str(pool), "--max", "0", "--model", str(tiny_mace_path)]) == 2


def test_non_finite_frames_are_dropped_and_named(tmp_path, backbone):
    broken = cu_frame(1)
    broken.positions[2, 0] = np.nan  # a diverged run
    run = write_run(tmp_path / "run", [cu_frame(0), broken, cu_frame(2)], [10, 20, 30], [0.3, 0.2, 0.1])
    hot = cu_frame(3)
    with open(run / FLAGGED_FILE, "a") as handle:
        handle.write(frame_extxyz_text(40, 0.1, -2.2, hot.get_chemical_symbols(), hot.positions, hot.cell.array,
                                       hot.pbc, np.array([1.0, np.inf] + [1.0] * (len(hot) - 2))))
    result = collect_flagged([run], backbone, progress=False)
    assert sorted(a.info["step"] for a in result.frames) == [10, 30]
    assert result.read == 4 and result.non_finite == 2 and "2 non-finite" in result.summary()
    assert any("dropped frame 1 (step 20): non-finite positions" in w for w in result.warnings)
    assert any("dropped frame 3 (step 40): non-finite importance" in w for w in result.warnings)


def test_collect_output_is_checked_before_any_work(tmp_path, tiny_mace_path, capsys, monkeypatch):
    def must_not_load(*_args, **_kwargs):
        raise AssertionError("model loaded before the output path was checked")

    monkeypatch.setattr(MaceBackbone, "from_file", must_not_load)
    run = write_run(tmp_path / "run", [cu_frame(0)], [10], [0.3])
    (tmp_path / "afile").write_text("x")  # a path under a regular file is unwritable even for root
    pool = tmp_path / "afile" / "pool.extxyz"
    assert main(["collect", str(run), "-o", str(pool), "--model", str(tiny_mace_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write pool file {pool}" in err


def write_hot_run(folder, frames, steps, hot_atoms):
    """A run whose frames each have a few important atoms (`hot_atoms` per frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FLAGGED_FILE, "w") as handle:
        for atoms, step, hot in zip(frames, steps, hot_atoms):
            importance = np.full(len(atoms), 0.5)
            importance[hot] = 20.0
            handle.write(frame_extxyz_text(step, 0.1, -2.2, atoms.get_chemical_symbols(), atoms.positions,
                                           atoms.cell.array, atoms.pbc, importance))
    return folder


def big_cu_frame(seed: int):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_collect_carve_cli_writes_regions_with_cores_and_provenance(tmp_path, tiny_mace_path, capsys):
    run = write_hot_run(tmp_path / "run", [big_cu_frame(0), big_cu_frame(1)], [10, 20], [[0, 1], [100]])
    pool = tmp_path / "pool.extxyz"
    code = main(["collect", str(run), "-o", str(pool), "--carve", "--buffer", "4", "--link", "3",
                 "--model", str(tiny_mace_path),
                 "--no-progress"])
    assert code == 0
    pieces = ase.io.read(pool, ":")
    assert sorted((int(p.info["step"]), int(p.arrays["probe_core"].sum())) for p in pieces) == [(10, 2), (20, 1)]
    for piece in pieces:
        assert piece.info[INFO_RUN] == str(run) and piece.arrays["probe_core"].dtype == bool
        assert len(piece) < 256 and "carve_centre" in piece.info and "frame_index" in piece.arrays
    out = capsys.readouterr().out
    assert "carved 2 regions from 2 frames" in out and "instead of 512 in the frames whole" in out


def test_collect_carve_bad_input_gets_one_line(tmp_path, tiny_mace_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    ase.io.write(plain / FLAGGED_FILE, [big_cu_frame(0)], format="extxyz")  # no importance array
    pool = tmp_path / "pool.extxyz"
    common = ["-o", str(pool), "--carve", "--buffer", "4", "--model", str(tiny_mace_path), "--no-progress"]
    assert main(["collect", str(plain), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no per-atom importance" in err
    run = write_hot_run(tmp_path / "run", [big_cu_frame(0)], [10], [[0]])
    assert main(["collect", str(run), *common, "--max-atoms", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than --max-atoms 10" in err


def test_collect_carve_core_radius_grows_the_core(tmp_path, tiny_mace_path, capsys):
    run = write_hot_run(tmp_path / "run", [big_cu_frame(0)], [10], [[0]])
    pool = tmp_path / "pool.extxyz"
    common = ["-o", str(pool), "--carve", "--top-k", "1", "--buffer", "4", "--model", str(tiny_mace_path),
              "--no-progress"]
    assert main(["collect", str(run), *common, "--core-radius", "3"]) == 0
    (piece,) = ase.io.read(pool, ":")
    assert piece.arrays["probe_core"].sum() == 13  # the picked atom and its 12 nearest neighbours
    assert main(["collect", str(run), "-o", str(tmp_path / "other.extxyz"), *common[2:], "--core-radius", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--core-radius must be >= 0" in err
