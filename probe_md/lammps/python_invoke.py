"""PROBE's dump/halt actions for `pair_style mliap unified` in plain `lmp`, through `fix python/invoke`.

A pickled `ProbeMliapUnified` scores itself every N steps, but inside `pair_style mliap
unified probe.pkl 0` it has no lammps handle: it can log checks, not write flagged frames
(coordinates) or set `probe_stop` for `fix halt`. LAMMPS's `fix python/invoke` (PYTHON
package) calls a function of `__main__` with a PyCapsule of the LAMMPS pointer
(`post_force`: (ptr, vflag), also once in the run's setup; `end_of_step`: (ptr)), which is
that handle. In the input:

    pair_style mliap unified probe.pkl 0
    pair_coeff * * Cu
    python source here "from probe_md.lammps.python_invoke import probe_mliap_check, probe_mliap_finish"
    fix probe_invoke all python/invoke 10 post_force probe_mliap_check   # 10 = the class's every
    variable probe_stop internal 0
    fix probe_halt all halt 1 v_probe_stop > 0 error soft
    run 10000
    python probe_mliap_finish exists
    python probe_mliap_finish invoke                                      # reliability.png + summary.json

The checks themselves stay in the class and its `ReliabilityMonitor` (reliability.jsonl,
flagged.extxyz, halt decisions), exactly as when Python drives LAMMPS and calls `attach(lmp)`:
the callback attaches the handle and carries out what a check decided before it could.
Use `post_force`: it runs in the same step as the check, after the forces (so also after the
run's first check, in setup); `end_of_step` skips the setup and the first check's actions.
"""

from __future__ import annotations

from typing import Final

from probe_md.lammps.mliap_unified import LIVE_INSTANCES, ProbeMliapUnified

CALLBACK_NAME: Final[str] = "probe_mliap_check"  # the name fix python/invoke looks up in __main__


def running_unified() -> ProbeMliapUnified:
    """The one ProbeMliapUnified alive in this process, or a one-line error."""
    instances = list(LIVE_INSTANCES)
    if len(instances) != 1:
        found = "no ProbeMliapUnified" if not instances else f"{len(instances)} ProbeMliapUnified instances"
        raise RuntimeError(
            f"fix python/invoke {CALLBACK_NAME}: {found} in this process; it needs exactly one "
            "(pair_style mliap unified with a pickled ProbeMliapUnified, or load_unified(...) from Python)"
        )
    return instances[0]


def lammps_handle(lammps_ptr):
    """A `lammps` object around fix python/invoke's pointer (or an object that already is one)."""
    if hasattr(lammps_ptr, "set_internal_variable"):
        return lammps_ptr
    from lammps import lammps

    return lammps(ptr=lammps_ptr)


def check_step(unified: ProbeMliapUnified, lmp) -> None:
    """Attach the handle (once) and carry out a pending check's dump/halt (collective)."""
    if unified.lmp_ is None:
        unified.attach(lmp)
    unified.act_on_pending()


def probe_mliap_check(lammps_ptr, vflag=None) -> None:
    """The `fix python/invoke` callback (post_force or end_of_step)."""
    unified = running_unified()
    check_step(unified, unified.lmp_ if unified.lmp_ is not None else lammps_handle(lammps_ptr))


def probe_mliap_finish(lammps_ptr=None) -> dict | None:
    """After the run (`python probe_mliap_finish invoke`): reliability.png and summary.json."""
    return running_unified().finish()
