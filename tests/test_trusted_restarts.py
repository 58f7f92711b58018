"""last_trusted.restart: only whole files of passing checks, promoted by one rename."""

from __future__ import annotations

from probe_md.lammps.trusted_restarts import TrustedRestarts


def write_candidate(restarts: TrustedRestarts, step: int) -> None:
    restarts.pending_path(step).write_text(f"state at {step}")


def test_passing_checks_are_promoted_failing_ones_removed(tmp_path):
    restarts = TrustedRestarts(tmp_path, every=10)
    assert restarts.command() == f"restart 10 {tmp_path}/.probe_trusted.*.restart"
    restarts.start()
    restarts.record(10, passed=True)
    restarts.promote_written()  # LAMMPS has not written step 10 yet: nothing happens
    assert not restarts.path.exists()
    write_candidate(restarts, 10)
    restarts.record(20, passed=False)
    write_candidate(restarts, 20)
    restarts.record(25, passed=True)  # not a restart step: ignored
    restarts.promote_written()
    assert restarts.path.read_text() == "state at 10" and restarts.step == 10
    assert not restarts.pending_path(20).exists()
    restarts.record(30, passed=True)
    write_candidate(restarts, 30)
    restarts.finish()
    assert restarts.path.read_text() == "state at 30" and restarts.step == 30
    assert not list(tmp_path.glob(".probe_trusted.*"))


def test_a_killed_runs_leftovers_are_never_promoted(tmp_path):
    restarts = TrustedRestarts(tmp_path, every=10)
    (tmp_path / ".probe_trusted.40.restart").write_text("half-writ")  # killed mid-write
    restarts.start()
    restarts.record(40, passed=True)
    restarts.promote_written()
    assert not restarts.path.exists()


def test_disabled_writes_nothing(tmp_path):
    restarts = TrustedRestarts(tmp_path, every=10, enabled=False)
    assert restarts.command() is None
    restarts.record(10, passed=True)
    write_candidate(restarts, 10)
    restarts.promote_written()
    assert not restarts.path.exists()
