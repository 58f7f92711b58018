"""Drive a LAMMPS input from Python with PROBE monitoring every N steps.

The input runs unchanged, command by command, except that just before its first `run`
the driver adds:

  variable probe_every internal N                  the check interval (adaptive checking moves it)
  compute probe_rel all probe/reliability every v_probe_every   (unless the input defines one)
  fix probe_cb all external pf/callback 1 1        a Python hook on every step
  variable probe_stop internal 0 + fix probe_halt all halt 1 v_probe_stop > 0 error soft
  restart N <out>/.probe_trusted.*.restart         candidates for last_trusted.restart

On check steps the hook reads the reliability (global [probability, logit], per-atom
importance) and hands it to a `ReliabilityMonitor`; on every step the ranks agree (one small
Allreduce) on whether to stop: a halt decision, a failed hook, or Ctrl-C/SIGTERM on any rank.
Then `probe_stop` is set on every rank, `fix halt` ends the run in the same step, the driver
skips the rest of the input, writes a restart (halt.restart / interrupted.restart) and the
summary. Flagged frames are gathered to rank 0.

Limitation: the input is fed to LAMMPS one command at a time, so `jump`/`label` loops
are not supported (use `run N every ...` or several `run` lines instead).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from probe_md.lammps import input_script
from probe_md.lammps.frames import check_element_symbols, gather_frame, type_elements
from probe_md.lammps.monitor import MonitorConfig, ReliabilityMonitor, ensure_writable_dir
from probe_md.lammps.resume import SYSTEM_DEFINITIONS, ResumedInput, expand_variables
from probe_md.lammps.run_folder import HALT_RESTART, INTERRUPT_RESTART, LAMMPS_LOG, RunFolder, supersede_after
from probe_md.lammps.stop_requests import StopRequests, exit_code_for
from probe_md.lammps.trusted_restarts import TrustedRestarts
from probe_md.mpi import agree_max, mark_collective, on_root, rank_of, resolve_comm

# LAMMPS ids the driver owns (prefixed so they cannot collide with a user's input)
COMPUTE_ID: Final[str] = "probe_rel"
FIX_CALLBACK_ID: Final[str] = "probe_cb"
FIX_HALT_ID: Final[str] = "probe_halt"
STOP_VARIABLE: Final[str] = "probe_stop"
EVERY_VARIABLE: Final[str] = "probe_every"


class Reading(NamedTuple):
    """One reliability reading on one rank."""

    probability: float  # global, identical on every rank
    logit: float  # global
    importances: np.ndarray  # [nlocal] this rank's atoms, 1 = average atom
    predicted_error: tuple[float, float, float] | None = None  # median, lower, upper; criterion units


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
    """The plugin's `compute ID all probe/reliability every v_probe_every`: vector [p, logit,
    predicted error median, lower, upper], per-atom importance. Its interval is the driver's variable, so adaptive checking works."""

    compute_id: str = COMPUTE_ID
    define: bool = True  # False when the input already defines the compute

    def commands(self, every: int) -> list[str]:
        if not self.define:
            return []
        return [f"compute {self.compute_id} all probe/reliability every v_{EVERY_VARIABLE}"]

    def read(self, lmp, comm) -> Reading:
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        vector = lmp.numpy.extract_compute(self.compute_id, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
        importances = lmp.numpy.extract_compute(self.compute_id, LMP_STYLE_ATOM, LMP_TYPE_VECTOR)
        nlocal = lmp.extract_global("nlocal")
        importances = np.ones(nlocal) if importances is None else np.array(importances[:nlocal], dtype=float)
        predicted_error = tuple(float(v) for v in vector[2:5]) if len(vector) >= 5 else None
        return Reading(float(vector[0]), float(vector[1]), importances, predicted_error)


def predicted_error_text(check) -> str:
    """"; p = 0.02, predicted error 0.041 (0.032-0.052)" for the console, or "" without one."""
    if check.predicted_error is None:
        return ""
    median, lower, upper = check.predicted_error
    if math.isinf(upper):  # beyond the largest error the head was trained on
        return f"; p = {check.probability:.2g}, predicted error over {lower:.3g} (beyond the head's training errors)"
    return f"; p = {check.probability:.2g}, predicted error {median:.3g} ({lower:.3g}-{upper:.3g})"


def find_reliability_compute(commands: Sequence[str], config: MonitorConfig) -> ProbeComputeSource:
    """Use the input's own probe/reliability compute if it has one (its `every` must match)."""
    found = input_script.reliability_compute(commands)
    if found is None:
        return ProbeComputeSource()
    compute_id, theirs = found
    adaptive_ok = theirs == f"v_{EVERY_VARIABLE}"
    if theirs is not None and not adaptive_ok and not theirs.startswith("$") and theirs != str(config.every):
        raise ValueError(
            f"the input's compute {compute_id} checks every {theirs} steps but --every is {config.every}: "
            "make them equal"
        )
    if config.every_when_low is not None and not adaptive_ok:
        raise ValueError(
            f"--every-when-low needs the input's compute {compute_id} to check `every v_{EVERY_VARIABLE}` "
            "(the driver sets that variable)"
        )
    return ProbeComputeSource(compute_id=compute_id, define=False)


@dataclass(frozen=True)
class RunOptions:
    """How a monitored run treats its folder, signals and restarts."""

    folder_mode: str = "fresh"  # fresh | overwrite | resume (see run_folder)
    resume_from: Path | None = None  # a restart of this input (resume mode)
    trusted_restarts: bool = True  # keep last_trusted.restart


class MonitoredRun:
    """One LAMMPS instance + hook + monitor; `run_lammps_input` is the function to call."""

    def __init__(self, config: MonitorConfig, folder: RunFolder, source: ReliabilitySource,
                 options: RunOptions, elements: Sequence[str] | None = None,
                 variables: Mapping[str, str] | None = None, comm=None, screen: bool = True):
        self.config, self.folder, self.source, self.options = config, folder, source, options
        self.given_elements = list(elements) if elements else None
        self.elements: list[str] | None = None
        self.comm = comm
        self.rank = rank_of(comm)
        self.writer = self.rank == 0
        self.monitor = ReliabilityMonitor(config, folder.path, writer=self.writer, check_folder=False, say=self.say)
        self.trusted = TrustedRestarts(folder.path, config.every, enabled=options.trusted_restarts)
        self.resume = ResumedInput(options.resume_from.resolve()) if options.resume_from else None
        self.stops = StopRequests(announce=self.writer)
        args = [*folder.lammps_log_args(), "-nocite"] + ([] if screen else ["-screen", "none"])
        for name, value in (variables or {}).items():
            args += ["-var", str(name), str(value)]
        lammps = _import_lammps()
        self.lmp = lammps.lammps(cmdargs=args, comm=comm) if comm is not None else lammps.lammps(cmdargs=args)
        self.installed = False
        self.error: BaseException | None = None
        self.last_checked_step = -1
        self.stopped_by: str | None = None  # "reliability", "error", "SIGINT", "SIGTERM"
        self.exit_code = 0  # 128 + signal after an interrupt
        self.steps_run = 0
        self.run_seconds = 0.0
        self.restart_path: Path | None = None
        if folder.log_command():
            self.command(folder.log_command())

    def command(self, text: str) -> None:
        """One LAMMPS command; a LAMMPS error becomes a one-line RuntimeError naming the command."""
        try:
            self.lmp.command(text)
        except Exception as error:  # the lammps module raises plain Exception("ERROR: ...")
            if self.error is not None:  # the hook failed inside this command: that is the news
                raise self.error from None
            message = " ".join(str(error).split())
            failure = RuntimeError(f"LAMMPS stopped at `{' '.join(text.split())}`: {message}")
            if not message.startswith("ERROR on proc"):  # error->all: every rank has it
                mark_collective(failure)
            raise failure from None

    def say(self, text: str, **kwargs) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # --- set-up before the first run ---------------------------------------------------
    def install(self) -> None:
        """Take over the folder, restore a resumed run, add the hook, halt fix and restarts."""
        self._start_in_folder()
        self.elements = type_elements(self.lmp, self.given_elements, say=self.say)
        self.command(f"variable {EVERY_VARIABLE} internal {self.monitor.every_now}")
        for command in self.source.commands(self.config.every):
            self._define_source(command)
        self.command(f"fix {FIX_CALLBACK_ID} all external pf/callback 1 1")
        self.lmp.set_fix_external_callback(FIX_CALLBACK_ID, self._callback)
        self.command(f"variable {STOP_VARIABLE} internal 0")
        self.command(f"fix {FIX_HALT_ID} all halt 1 v_{STOP_VARIABLE} > 0 error soft")
        if self.trusted.command():
            self.command(self.trusted.command())
        self.installed = True

    def _start_in_folder(self) -> None:
        """The input got this far: now the folder may change (overwrite, resume)."""
        restored = self.resume.restored_step if self.resume else None

        def prepare():
            self.folder.take_over()
            self.trusted.start()
            return supersede_after(self.folder.path, restored) if restored is not None else ([], 0, 0)

        records, frames, sampled = on_root(self.comm, prepare)
        if restored is not None:
            self.monitor.restore(records, frames, sampled)
            self.last_checked_step = restored  # its check is in the log already
            if self.resume.skipped:
                self.say(f"PROBE: resuming at step {restored} from {self.resume.restart}; skipped "
                         f"{len(self.resume.skipped)} command(s) the restart already holds: "
                         + "; ".join(self.resume.skipped[:6]))

    def _define_source(self, command: str) -> None:
        try:
            self.command(command)
        except RuntimeError as error:
            if "probe/reliability" in command and "Unrecognized compute style" in str(error):
                raise mark_collective(RuntimeError(
                    "LAMMPS does not know compute probe/reliability: use pair_style probe/mace and "
                    "load the plugin (`plugin load $(probe-md build-plugin)`) in the input"
                )) from None
            raise

    # --- the hook, on every step --------------------------------------------------------
    def _callback(self, caller, step, nlocal, tags, x, fext) -> None:
        fext[:] = 0.0  # the fix only observes: it adds no force
        if self.writer:
            self.trusted.promote_written()
        checking = step > self.last_checked_step and step % self.monitor.every_now == 0
        halt = failed = False
        if checking:
            self.last_checked_step = step
            # ctypes swallows exceptions raised in callbacks: keep the first, stop the run on
            # every rank, and re-raise it after the run.
            try:
                halt = self._check(step, nlocal, tags, x)
            except BaseException as error:  # noqa: BLE001 - re-raised after the run
                if self.error is None:
                    self.error = error
                halt = failed = True
        halt, failed_anywhere, signal_number = agree_max(self.comm, (halt, failed, self.stops.received))
        if failed_anywhere and self.error is None:
            self.error = RuntimeError(f"the PROBE monitoring hook failed on another rank at step {step}")
        if signal_number and self.stopped_by is None:
            self.stopped_by = _signal_name(signal_number)
            self.exit_code = exit_code_for(signal_number)
        elif halt and self.stopped_by is None:
            self.stopped_by = "reliability" if not failed_anywhere else "error"
        if halt or signal_number:
            self.lmp.set_internal_variable(STOP_VARIABLE, 1)

    def _check(self, step, nlocal, tags, x) -> bool:
        """Read, decide, dump, keep the interval; returns this rank's halt decision."""
        reading = self.source.read(self.lmp, self.comm)
        decision = self.monitor.check(step, reading.probability, reading.logit, reading.predicted_error)
        if decision.dump or decision.sample:  # gathering is collective: every rank decides alike
            frame = gather_frame(self.lmp, self.comm, self.elements, nlocal, tags, x, reading.importances)
            if frame is not None:
                if decision.dump:
                    self.monitor.write_frame(decision, **frame)
                if decision.sample:
                    self.monitor.write_frame(decision, **frame, sampled=True)
        if self.writer:
            self.trusted.record(step, passed=not decision.flagged)
        self.lmp.set_internal_variable(EVERY_VARIABLE, decision.next_every)
        self.lmp.flush_buffers()  # log.lammps is whole up to this check, even after a kill
        return decision.halt

    # --- running the input ----------------------------------------------------------------
    def run_commands(self, commands: Sequence[str]) -> None:
        with self.stops:
            for index, command in enumerate(commands):
                word = input_script.first_word(command)
                if not word:
                    continue
                if self._interrupted_between_commands():
                    return self._stop(commands[index:])
                if word == "run":
                    self._run(command)
                    if self.stopped_by is not None:
                        return self._stop(commands[index + 1 :])
                else:
                    self._input_command(command, word)
        if not self.installed:
            raise ValueError("the input has no `run` command: nothing to monitor")

    def _input_command(self, command: str, word: str) -> None:
        if word == "plugin" and _loads_probe_plugin(command) and self.lmp.has_style("pair", "probe/mace"):
            return  # loaded at start-up from the wheel's entry point: loading twice only warns
        if self.resume is not None:
            command = self.resume.rewrite(command, word)
            if command is None:
                return
        self.command(command)
        if self.resume is not None and word in SYSTEM_DEFINITIONS and self.resume.restored_step is None:
            self.resume.restored_step = int(self.lmp.extract_global("ntimestep"))

    def _run(self, command: str) -> None:
        if not self.installed:
            self.install()
        if self.resume is not None:
            command = self.resume.rewrite_run(command, self._expand)
            if command is None:
                return
        before = self.lmp.extract_global("ntimestep")
        start = time.perf_counter()
        self.command(command)
        self.run_seconds += time.perf_counter() - start
        self.steps_run += self.lmp.extract_global("ntimestep") - before
        if self.error is not None:
            raise self.error

    def _expand(self, text: str) -> str:
        return expand_variables(text, lambda name: self.lmp.extract_variable(name))

    def _interrupted_between_commands(self) -> bool:
        (signal_number,) = agree_max(self.comm, (self.stops.received,))
        if signal_number and self.stopped_by is None:
            self.stopped_by = _signal_name(signal_number)
            self.exit_code = exit_code_for(signal_number)
        return bool(signal_number)

    def _stop(self, remaining: Sequence[str]) -> None:
        """After a halt or an interrupt: say why and where, and write the restart."""
        skipped = [c for c in remaining if input_script.first_word(c)]
        stopped = self.lmp.extract_global("ntimestep")
        rest = f", skipping the input's remaining {len(skipped)} commands" if skipped else ""
        if self.stopped_by == "reliability":
            # fix halt does not act during a run's setup: a decision taken on the run's first
            # step stops the run `every` steps later
            at = self.monitor.halted_at_
            self.say(f"PROBE: reliability below {self.config.threshold:g} for {self.config.patience} "
                     f"consecutive checks: halted at step {at}"
                     + (f" (the run stopped at step {stopped})" if stopped != at else "") + rest
                     + predicted_error_text(self.monitor.checks_[-1]))
            self.write_restart(HALT_RESTART)
        else:
            self.say(f"PROBE: {self.stopped_by} received: stopped at step {stopped}{rest}")
            if self.lmp.extract_setting("box_exist"):
                self.write_restart(INTERRUPT_RESTART)

    def write_restart(self, name: str) -> Path:
        """write_restart to a temporary name, then one rename: never a half-written restart."""
        self.restart_path = self.folder.file(name)
        temporary = self.folder.file(f".{name}.tmp")
        self.command(f"write_restart {temporary}")
        if self.writer:
            os.replace(temporary, self.restart_path)
        return self.restart_path

    def finish(self, print_summary: bool = True) -> dict:
        if self.writer:
            self.trusted.finish()
        self.monitor.extra_summary.update(self._run_facts())
        summary = self.monitor.finish(print_summary=print_summary)
        if self.restart_path is not None:
            self.say(f"  restart written: {self.restart_path}")
        # rank 0 counted the frames it wrote; every rank returns its summary
        return self.comm.bcast(summary, root=0) if self.comm is not None else summary

    def _run_facts(self) -> dict:
        steps_per_second = self.steps_run / self.run_seconds if self.run_seconds > 0 else None
        trusted = self.trusted.path if self.trusted.path.exists() else None
        return {
            "restart": str(self.restart_path) if self.restart_path else None,
            "last_trusted_restart": str(trusted) if trusted else None,
            "last_trusted_step": self.trusted.step,
            "stopped_by": self.stopped_by,
            "steps_run": int(self.steps_run),
            "final_step": int(self.lmp.extract_global("ntimestep")),
            "temperature_k": _temperature(self.lmp),
            "wall_seconds": round(self.run_seconds, 3),
            "steps_per_second": round(steps_per_second, 2) if steps_per_second else None,
            "ranks": self.comm.Get_size() if self.comm is not None else 1,
            "lammps_log": str(self.folder.file(LAMMPS_LOG)),
        }

    def close(self) -> None:
        self.lmp.close()


def _loads_probe_plugin(command: str) -> bool:
    words = command.split("#", 1)[0].split()
    return len(words) >= 3 and words[1] == "load" and Path(words[2]).name == "probemdplugin.so"


def _temperature(lmp) -> float | None:
    """The temperature when the run stopped (None before the box exists)."""
    try:
        return round(float(lmp.get_thermo("temp")), 1) if lmp.extract_setting("box_exist") else None
    except Exception:  # noqa: BLE001 - a summary detail must not fail the run
        return None


def _signal_name(signal_number: int) -> str:
    import signal

    return signal.Signals(signal_number).name


def _import_lammps():
    from probe_md.lammps.runtime import import_lammps

    return import_lammps()


def _plugin_load_command() -> str:
    """`plugin load <so>` for the PROBE plugin (built on first use)."""
    try:
        from probe_md.lammps.build import plugin_path
    except ImportError as error:
        raise RuntimeError(f"the PROBE LAMMPS plugin is not available in this install ({error})") from None
    return f"plugin load {plugin_path(build=True)}"


def prepare_folder(out_dir: Path, options: RunOptions, comm) -> RunFolder:
    """Check the output folder before any work (rank 0 looks, every rank gets the verdict)."""
    folder = RunFolder(Path(out_dir), options.folder_mode)

    def check():
        ensure_writable_dir(folder.path)
        folder.check()
        if options.resume_from is not None and not Path(options.resume_from).is_file():
            raise FileNotFoundError(f"--from {options.resume_from}: no such restart file")
        return folder

    return on_root(comm, check)


def run_lammps_input(
    input_path: str | Path,
    every: int = MonitorConfig.every,
    threshold: float = MonitorConfig.threshold,
    patience: int = MonitorConfig.patience,
    on_drop: str | Sequence[str] = MonitorConfig.actions,
    out_dir: str | Path = "probe_run",
    variables: Mapping[str, str] | None = None,
    source: ReliabilitySource | None = None,
    elements: Sequence[str] | None = None,
    comm="auto",
    screen: bool = True,
    print_summary: bool = True,
    preamble: Sequence[str] = (),
    every_when_low: int | None = None,
    warn: float | None = None,
    options: RunOptions = RunOptions(),
    sample_every: int | None = None,
) -> dict:
    """Run a LAMMPS input with PROBE monitoring; returns the monitor's summary (on every rank),
    with `exit_code` 130/143 when Ctrl-C/SIGTERM stopped it.

    `source` defaults to the plugin's probe/reliability compute (the input's own if it defines
    one); `elements` (optional) must agree with pair_coeff's type map; `preamble` are commands
    run before the input (`plugin load` is added when the input uses probe/mace styles that
    LAMMPS does not know yet). `options` choose fresh/overwrite/resume and last_trusted.restart.
    `sample_every` also writes every check at a multiple of it to sampled.extxyz, flagged or not.
    """
    comm = resolve_comm(comm)
    try:
        config, commands, elements = _validated_inputs(
            Path(input_path), every, threshold, patience, on_drop, every_when_low, warn, elements, sample_every)
        if source is None:
            source = find_reliability_compute(commands, config)
        if input_script.has_command(commands, "restart") and options.trusted_restarts:
            options = RunOptions(options.folder_mode, options.resume_from, trusted_restarts=False)
            if rank_of(comm) == 0:
                print("PROBE: the input sets its own `restart`: no last_trusted.restart", flush=True)
    except (ValueError, FileNotFoundError) as error:
        raise mark_collective(error)  # every rank checked the same input alike
    folder = prepare_folder(Path(out_dir), options, comm)
    run = MonitoredRun(config, folder, source, options, elements, variables, comm, screen)
    try:
        for command in _preamble(run, commands, preamble):
            run.command(command)
        run.run_commands(commands)
        summary = run.finish(print_summary=print_summary)
        summary["exit_code"] = run.exit_code
        return summary
    except BaseException:
        if run.installed:
            run.monitor.finish(print_summary=False)  # keep the log, plot and summary of what ran
        raise
    finally:
        run.close()


def _validated_inputs(input_path, every, threshold, patience, on_drop, every_when_low, warn, elements,
                      sample_every=None):
    if not input_path.is_file():
        raise FileNotFoundError(f"LAMMPS input {input_path} does not exist")
    config = MonitorConfig(every=every, threshold=threshold, patience=patience, actions=on_drop,
                           every_when_low=every_when_low, warn=warn, sample_every=sample_every)
    commands = input_script.read_input_commands(input_path)
    if not input_script.has_command(commands, "run"):
        raise ValueError(f"LAMMPS input {input_path} has no `run` command: nothing to monitor")
    return config, commands, (check_element_symbols(elements) if elements else None)


def _preamble(run: MonitoredRun, commands: Sequence[str], preamble: Sequence[str]) -> list[str]:
    """The given preamble, plus `plugin load` when the input needs the plugin and LAMMPS has
    not loaded it already (the wheel loads entry-point plugins at start-up)."""
    preamble = list(preamble)
    if input_script.uses_plugin_without_loading_it(commands) and not run.lmp.has_style("pair", "probe/mace"):
        preamble.insert(0, _plugin_load_command())
    return preamble
