"""The run folder: earlier runs refused, taken over only when asked, resumed without loss."""

from __future__ import annotations

import json

import ase
import ase.io
import pytest

from probe_md.lammps.run_folder import (
    FLAGGED_FILE, LOG_FILE, SAMPLED_FILE, SUPERSEDED_FLAGGED, SUPERSEDED_LOG, SUPERSEDED_SAMPLED, RunFolder,
    extxyz_frames, read_check_records, supersede_after,
)


def write_run(folder, steps, flagged_steps, sampled_steps=()):
    folder.mkdir(exist_ok=True)
    (folder / LOG_FILE).write_text("".join(json.dumps({"step": s, "dump": s in flagged_steps}) + "\n" for s in steps))
    for name, frame_steps in ((FLAGGED_FILE, flagged_steps), (SAMPLED_FILE, sampled_steps)):
        for step in frame_steps:
            atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[4, 4, 4], pbc=True)
            atoms.info["step"] = step
            ase.io.write(folder / name, atoms, format="extxyz", append=True)


def test_fresh_refuses_an_earlier_run_and_overwrite_waits_for_take_over(tmp_path):
    write_run(tmp_path, [0, 10], [10])
    with pytest.raises(FileExistsError, match="holds an earlier run .*reliability.jsonl"):
        RunFolder(tmp_path).check()
    folder = RunFolder(tmp_path, "overwrite")
    folder.check()
    assert folder.lammps_log_args() == ["-log", str(tmp_path / "log.lammps.pending")]
    assert (tmp_path / LOG_FILE).exists()  # untouched until the new input reaches `run`
    (tmp_path / "log.lammps.pending").write_text("new log")
    folder.take_over()
    assert not (tmp_path / LOG_FILE).exists() and (tmp_path / "log.lammps").read_text() == "new log"
    assert RunFolder(tmp_path, "resume").log_command() == f"log {tmp_path / 'log.lammps'} append"
    with pytest.raises(ValueError, match="mode 'append'"):
        RunFolder(tmp_path, "append")


def test_resume_moves_later_checks_and_frames_aside(tmp_path):
    write_run(tmp_path, [0, 10, 20, 30], [20, 30], sampled_steps=[0, 20])
    kept, frames, sampled = supersede_after(tmp_path, 10)
    assert [r["step"] for r in kept] == [0, 10] and frames == 0 and sampled == 1
    assert [a.info["step"] for a in ase.io.read(tmp_path / SAMPLED_FILE, index=":")] == [0]
    assert [a.info["step"] for a in ase.io.read(tmp_path / SUPERSEDED_SAMPLED, index=":")] == [20]
    assert [r["step"] for r in read_check_records(tmp_path / LOG_FILE)] == [0, 10]
    assert [r["step"] for r in read_check_records(tmp_path / SUPERSEDED_LOG)] == [20, 30]
    assert [a.info["step"] for a in ase.io.read(tmp_path / SUPERSEDED_FLAGGED, index=":")] == [20, 30]
    assert (tmp_path / FLAGGED_FILE).read_text() == ""


def test_torn_tails_of_a_killed_run_are_skipped(tmp_path):
    write_run(tmp_path, [0, 10], [0, 10])
    with open(tmp_path / LOG_FILE, "a") as log:
        log.write('{"step": 2')
    text = (tmp_path / FLAGGED_FILE).read_text()
    torn = text + text.splitlines(keepends=True)[0] + text.splitlines(keepends=True)[1]
    assert [r["step"] for r in read_check_records(tmp_path / LOG_FILE)] == [0, 10]
    assert len(list(extxyz_frames(torn))) == 2
