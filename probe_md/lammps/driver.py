"""Drive a LAMMPS input from Python with PROBE monitoring every N steps.

The input runs unchanged, command by command, except that just before its first `run`
the driver adds three things:

  compute probe_rel all probe/reliability every N   (unless the input defines one)
  fix probe_cb all external pf/callback N N         a Python hook on every Nth step
  variable probe_stop internal 0 + fix probe_halt all halt N v_probe_stop > 0 error soft

On each Nth step the hook reads the reliability (global [probability, logit], per-atom
importance), hands it to a `ReliabilityMonitor` and, on a halt decision, sets `probe_stop`
so `fix halt` ends the run cleanly on every rank in the same step; the driver then skips
the rest of the input and writes a restart. Under `mpirun` (mpi4py) every rank reaches the
same decision from the same global probability; flagged frames are gathered to rank 0.

Limitation: the input is fed to LAMMPS one command at a time, so `jump`/`label` loops
are not supported (use `run N every ...` or several `run` lines instead).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from probe_md.lammps.monitor import MonitorConfig, ReliabilityMonitor, ensure_writable_dir

# LAMMPS ids the driver owns (prefixed so they cannot collide with a user's input)
COMPUTE_ID: Final[str] = "probe_rel"
FIX_CALLBACK_ID: Final[str] = "probe_cb"
FIX_HALT_ID: Final[str] = "probe_halt"
STOP_VARIABLE: Final[str] = "probe_stop"
RESTART_FILE: Final[str] = "halt.restart"
LAMMPS_LOG_FILE: Final[str] = "log.lammps"

_RELIABILITY_COMPUTE = re.compile(r"^\s*compute\s+(\S+)\s+\S+\s+probe/reliability\b(.*)$")
_PLUGIN_STYLES = re.compile(r"\bprobe/(mace|reliability)\b")


class Reading(NamedTuple):
    """One reliability reading on one rank."""

    probability: float  # global, identical on every rank
    logit: float  # global
    importances: np.ndarray  # [nlocal] this rank's atoms, 1 = average atom


class ReliabilitySource(Protocol):
    """Where the reliability comes from: the one place that changes when the engine does."""

    def commands(self, every: int) -> list[str]:
        """LAMMPS commands defining the source (run once, after the pair style exists)."""
        ...

    def read(self, lmp, comm) -> Reading:
        """Called on every rank on a check step (collectively: it may reduce over ranks)."""
        ...


@dataclass
class ProbeComputeSource:
    """The plugin's `compute ID all probe/reliability every N`: vector [p, logit], per-atom importance."""

    compute_id: str = COMPUTE_ID
    define: bool = True  # False when the input already defines the compute

    def commands(self, every: int) -> list[str]:
        return [f"compute {self.compute_id} all probe/reliability every {every}"] if self.define else []

    def read(self, lmp, comm) -> Reading:
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        vector = lmp.numpy.extract_compute(self.compute_id, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
        importances = lmp.numpy.extract_compute(self.compute_id, LMP_STYLE_ATOM, LMP_TYPE_VECTOR)
        nlocal = lmp.extract_global("nlocal")
        importances = np.ones(nlocal) if importances is None else np.array(importances[:nlocal], dtype=float)
        return Reading(float(vector[0]), float(vector[1]), importances)


# ----------------------------------------------------------------------------- input handling
def read_input_commands(path: Path) -> list[str]:
    """The input's commands, `&` continuation lines joined (comments are left to LAMMPS)."""
    commands: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.rstrip()
        if stripped.endswith("&"):
            pending += stripped[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending:
        commands.append(pending)
    return commands


def first_word(command: str) -> str:
    words = command.split("#", 1)[0].split()
    return words[0] if words else ""


def find_reliability_compute(commands: Sequence[str], every: int) -> ProbeComputeSource:
    """Use the input's own probe/reliability compute if it has one (its `every` must match)."""
    for command in commands:
        match = _RELIABILITY_COMPUTE.match(command.split("#", 1)[0])
        if match:
            words = match.group(2).split()
            if "every" in words:
                theirs = words[words.index("every") + 1]
                if theirs != str(every) and not theirs.startswith("$"):
                    raise ValueError(
                        f"the input's compute {match.group(1)} checks every {theirs} steps but --every is {every}: "
                        "make them equal"
                    )
            return ProbeComputeSource(compute_id=match.group(1), define=False)
    return ProbeComputeSource()


def elements_from_masses(masses: Sequence[float]) -> list[str]:
    """Guess each atom type's element from its mass (the nearest standard atomic mass)."""
    from ase.data import atomic_masses, chemical_symbols

    symbols = []
    for mass in masses:
        z = int(np.argmin(np.abs(atomic_masses[1:] - mass))) + 1
        symbols.append(chemical_symbols[z])
    return symbols


def lammps_cell(lmp) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """(origin [3], cell rows [3,3] as ASE wants them, pbc) of the current box.

    Read with extract_global, not extract_box: extract_box calls Domain::init(), which must
    not run on one rank only in the middle of a step (it hangs the next step under MPI).
    """
    boxlo = lmp.extract_global("boxlo")
    boxhi = lmp.extract_global("boxhi")
    xy, yz, xz = (lmp.extract_global(name) for name in ("xy", "yz", "xz"))
    periodicity = lmp.extract_global("periodicity")
    lengths = np.array(boxhi) - np.array(boxlo)
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    return np.array(boxlo), cell, [bool(p) for p in periodicity]


def gather_frame(lmp, comm, elements: Sequence[str], nlocal: int, tags, x, importances) -> dict | None:
    """Gather every rank's atoms to rank 0, in atom-id order (independent of the domain
    decomposition): species, positions (box origin at 0), cell, pbc, importances on rank 0;
    None on the others. Collective: every rank must call it."""
    types = np.array(lmp.numpy.extract_atom("type")[:nlocal], dtype=int)
    importances = np.asarray(importances, dtype=float).reshape(-1)[:nlocal]
    local = (np.array(tags[:nlocal], dtype=np.int64), types, np.array(x[:nlocal], dtype=float).reshape(-1, 3),
             importances)
    parts = comm.gather(local, root=0) if comm is not None else [local]
    if parts is None:
        return None
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    types_all = np.concatenate([p[1] for p in parts])[order]
    origin, cell, pbc = lammps_cell(lmp)
    return {
        "species": [elements[t - 1] for t in types_all],
        "positions": np.concatenate([p[2] for p in parts])[order] - origin,
        "cell": cell,
        "importances": np.concatenate([p[3] for p in parts])[order],
        "pbc": pbc,
    }


def _mpi_comm():
    """COMM_WORLD when mpi4py is there (1 rank is fine); None otherwise."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


# ----------------------------------------------------------------------------- the driver
class MonitoredRun:
    """One LAMMPS instance + hook + monitor; `run_lammps_input` is the function to call."""

    def __init__(
        self,
        config: MonitorConfig,
        out_dir: Path,
        source: ReliabilitySource,
        elements: Sequence[str] | None = None,
        variables: Mapping[str, str] | None = None,
        comm=None,
        screen: bool = True,
    ):
        self.config = config
        self.source = source
        self.elements = list(elements) if elements else None
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.out_dir = out_dir
        # Rank 0 checks the folder and tells the others, so a bad --out fails before LAMMPS
        # starts, on every rank, with the same one-line message.
        problem = None
        if self.rank == 0:
            try:
                ensure_writable_dir(out_dir)
            except PermissionError as error:
                problem = str(error)
        if comm is not None:
            problem = comm.bcast(problem, root=0)
        if problem:
            raise PermissionError(problem)
        self.monitor = ReliabilityMonitor(config, out_dir, writer=self.rank == 0)
        if self.rank == 0 and (out_dir / RESTART_FILE).exists():
            (out_dir / RESTART_FILE).unlink()  # an earlier run's restart would read as this run's
        lammps = _import_lammps()
        args = ["-log", str(out_dir / LAMMPS_LOG_FILE), "-nocite"]
        if not screen:
            args += ["-screen", "none"]
        for name, value in (variables or {}).items():
            args += ["-var", str(name), str(value)]
        self.lmp = lammps.lammps(cmdargs=args, comm=comm) if comm is not None else lammps.lammps(cmdargs=args)
        self.installed = False
        self.error: BaseException | None = None
        self.last_checked_step = -1
        self.steps_run = 0
        self.run_seconds = 0.0
        self.restart_path: Path | None = None

    def command(self, text: str) -> None:
        """One LAMMPS command; a LAMMPS error becomes a one-line RuntimeError naming the command."""
        try:
            self.lmp.command(text)
        except Exception as error:  # the lammps module raises plain Exception("ERROR: ...")
            if self.error is not None:  # the hook failed inside this command: that is the news
                raise self.error from None
            message = " ".join(str(error).split())
            raise RuntimeError(f"LAMMPS stopped at `{' '.join(text.split())}`: {message}") from None

    # --- hook ---------------------------------------------------------------------------
    def install(self) -> None:
        """Add the reliability source, the callback fix and the halt fix (before the first run)."""
        every = self.config.every
        for command in self.source.commands(every):
            try:
                self.command(command)
            except RuntimeError as error:
                if "probe/reliability" in command and "Unrecognized compute style" in str(error):
                    raise RuntimeError(
                        "LAMMPS does not know compute probe/reliability: use pair_style probe/mace and "
                        "load the plugin (`plugin load $(probe-md build-plugin)`) in the input"
                    ) from None
                raise
        self.command(f"fix {FIX_CALLBACK_ID} all external pf/callback {every} {every}")
        self.lmp.set_fix_external_callback(FIX_CALLBACK_ID, self._callback)
        self.command(f"variable {STOP_VARIABLE} internal 0")
        self.command(f"fix {FIX_HALT_ID} all halt {every} v_{STOP_VARIABLE} > 0 error soft")
        if self.elements is None:
            masses = self.lmp.numpy.extract_atom("mass")
            ntypes = self.lmp.extract_global("ntypes")
            self.elements = elements_from_masses(np.asarray(masses)[1 : ntypes + 1])
        self.installed = True

    def _callback(self, caller, step, nlocal, tags, x, fext) -> None:
        fext[:] = 0.0  # the fix only observes: it adds no force
        if step <= self.last_checked_step:  # the setup of a second `run` repeats the last step
            return
        self.last_checked_step = step
        # ctypes swallows exceptions raised in callbacks: keep the first, stop the run on
        # every rank, and re-raise it after the run.
        failed = False
        try:
            halt = self._check(step, nlocal, tags, x)
        except BaseException as error:  # noqa: BLE001 - re-raised after the run
            if self.error is None:
                self.error = error
            halt = failed = True
        if self.comm is not None:  # one rank's halt or failure stops all of them
            halt, failed_anywhere = self.comm.allreduce((int(halt), int(failed)), op=_mpi_max_pair)
            if failed_anywhere and self.error is None:
                self.error = RuntimeError(f"the PROBE monitoring hook failed on another rank at step {step}")
        if halt:
            self.lmp.set_internal_variable(STOP_VARIABLE, 1)

    def _check(self, step, nlocal, tags, x) -> bool:
        """Read, decide, dump; returns this rank's halt decision."""
        reading = self.source.read(self.lmp, self.comm)
        decision = self.monitor.check(step, reading.probability, reading.logit)
        if decision.dump:
            self._write_frame(decision, nlocal, tags, x, reading.importances)
        return decision.halt

    def _write_frame(self, decision, nlocal, tags, x, importances) -> None:
        frame = gather_frame(self.lmp, self.comm, self.elements, nlocal, tags, x, importances)
        if frame is not None:
            self.monitor.write_frame(decision, **frame)

    # --- running the input ----------------------------------------------------------------
    def run_commands(self, commands: Sequence[str]) -> None:
        for index, command in enumerate(commands):
            word = first_word(command)
            if word == "run":
                if not self.installed:
                    self.install()
                before = self.lmp.extract_global("ntimestep")
                start = time.perf_counter()
                self.command(command)
                self.run_seconds += time.perf_counter() - start
                self.steps_run += self.lmp.extract_global("ntimestep") - before
                if self.error is not None:
                    raise self.error
                if self.monitor.halted:
                    skipped = [c for c in commands[index + 1 :] if first_word(c)]
                    stopped = self.lmp.extract_global("ntimestep")
                    # fix halt does not act during a run's setup: a decision taken on the
                    # run's first step stops the run `every` steps later
                    self._say(
                        f"PROBE: reliability below {self.config.threshold:g} for {self.config.patience} "
                        f"consecutive checks: halted at step {self.monitor.halted_at_}"
                        + (f" (the run stopped at step {stopped})" if stopped != self.monitor.halted_at_ else "")
                        + (f", skipping the input's remaining {len(skipped)} commands" if skipped else "")
                    )
                    self.write_restart()
                    return
            elif word:
                self.command(command)
        if not self.installed:
            raise ValueError("the input has no `run` command: nothing to monitor")

    def write_restart(self) -> Path:
        self.restart_path = self.out_dir / RESTART_FILE
        self.command(f"write_restart {self.restart_path}")
        return self.restart_path

    def _say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def finish(self, print_summary: bool = True) -> dict:
        steps_per_second = self.steps_run / self.run_seconds if self.run_seconds > 0 else None
        self.monitor.extra_summary.update(
            {
                "restart": str(self.restart_path) if self.restart_path else None,
                "steps_run": int(self.steps_run),
                "final_step": int(self.lmp.extract_global("ntimestep")),
                "wall_seconds": round(self.run_seconds, 3),
                "steps_per_second": round(steps_per_second, 2) if steps_per_second else None,
                "ranks": self.comm.Get_size() if self.comm is not None else 1,
                "lammps_log": str(self.out_dir / LAMMPS_LOG_FILE),
            }
        )
        summary = self.monitor.finish(print_summary=print_summary)
        # rank 0 counted the frames it wrote; every rank returns its summary
        return self.comm.bcast(summary, root=0) if self.comm is not None else summary

    def close(self) -> None:
        self.lmp.close()


def _mpi_max_pair(a, b):
    """Element-wise max of two tuples (the reduction of (halt, failed) flags over ranks)."""
    return tuple(max(x, y) for x, y in zip(a, b))


def _import_lammps():
    from probe_md.lammps_runtime import import_lammps

    return import_lammps()


def _plugin_load_command() -> str:
    """`plugin load <so>` for the PROBE plugin (built on first use)."""
    try:
        from probe_md.lammps.build import plugin_path
    except ImportError as error:
        raise RuntimeError(f"the PROBE LAMMPS plugin is not available in this install ({error})") from None
    return f"plugin load {plugin_path(build=True)}"


def run_lammps_input(
    input_path: str | Path,
    every: int = 10,
    threshold: float = 0.5,
    patience: int = 3,
    on_drop: str | Sequence[str] = ("dump", "halt"),
    out_dir: str | Path = "probe_run",
    variables: Mapping[str, str] | None = None,
    source: ReliabilitySource | None = None,
    elements: Sequence[str] | None = None,
    comm="auto",
    screen: bool = True,
    print_summary: bool = True,
    preamble: Sequence[str] = (),
) -> dict:
    """Run a LAMMPS input with PROBE monitoring; returns the monitor's summary (on every rank).

    `source` defaults to the plugin's probe/reliability compute (the input's own if it defines
    one); `elements` maps atom types 1..n to symbols (default: guessed from the masses);
    `preamble` are commands run before the input (e.g. `plugin load`, added automatically
    when the input uses probe/mace styles without loading the plugin).
    """
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"LAMMPS input {input_path} does not exist")
    config = MonitorConfig(every=every, threshold=threshold, patience=patience, actions=on_drop)
    commands = read_input_commands(input_path)
    if not any(first_word(c) == "run" for c in commands):
        raise ValueError(f"LAMMPS input {input_path} has no `run` command: nothing to monitor")
    preamble = list(preamble)
    if source is None:
        source = find_reliability_compute(commands, every)
        text = "\n".join(c.split("#", 1)[0] for c in commands)
        if _PLUGIN_STYLES.search(text) and not re.search(r"^\s*plugin\s+load\b", text, re.M):
            preamble.insert(0, _plugin_load_command())
    if comm == "auto":
        comm = _mpi_comm()
    run = MonitoredRun(config, Path(out_dir), source, elements, variables, comm, screen)
    try:
        for command in preamble:
            run.command(command)
        run.run_commands(commands)
        return run.finish(print_summary=print_summary)
    except BaseException:
        run.monitor.finish(print_summary=False)  # keep the log, plot and summary of what ran
        raise
    finally:
        run.close()
