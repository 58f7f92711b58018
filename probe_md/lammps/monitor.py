"""Engine-independent reliability monitoring: decide, log, dump flagged frames, summarise.

The MD front ends (LAMMPS driver, ML-IAP class) hand every check to a `ReliabilityMonitor`:
step, calibrated probability that the MLIP is reliable, its logit and, when the frame is
flagged, the structure with per-atom importances. The monitor decides whether the frame is
flagged (probability below the threshold) and whether to halt (`patience` consecutive flagged
checks), and writes:

  reliability.jsonl  one JSON object per check, appended and flushed line by line
  flagged.extxyz     flagged frames (species, positions, cell, pbc; info step/reliability/
                     logit; per-atom `importance`), appended whole and fsync'ed
  sampled.extxyz     with `sample_every`: every N-th step's frame whether flagged or not, the
                     same way (an unbiased sample of the run: to calibrate or verify on)
  reliability.png    reliability against step (written atomically at the end)
  summary.json       the summary dict (written atomically at the end)
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Sequence

import numpy as np

from probe_md.io_utils import append_and_fsync, atomic_write_bytes
from probe_md.lammps.run_folder import FLAGGED_FILE, LOG_FILE, PLOT_FILE, SAMPLED_FILE, SUMMARY_FILE, RunFolder

ACTIONS: Final[tuple[str, ...]] = ("dump", "halt")
__all__ = ["FLAGGED_FILE", "LOG_FILE", "PLOT_FILE", "SUMMARY_FILE", "MonitorConfig", "ReliabilityMonitor"]

# extxyz keys of a flagged frame
INFO_STEP: Final[str] = "step"  # int, MD timestep
INFO_RELIABILITY: Final[str] = "reliability"  # float, calibrated P(reliable)
INFO_LOGIT: Final[str] = "logit"  # float, calibrated logit
INFO_PREDICTED_ERROR: Final[str] = "predicted_error"  # [3] median, lower, upper (80 %), criterion units
ARRAY_IMPORTANCE: Final[str] = "importance"  # [n_atoms] float, 1 = average atom


def parse_actions(text: str | Sequence[str]) -> tuple[str, ...]:
    """'dump,halt' -> ('dump', 'halt'); '' or 'none' -> () (monitor and log only)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    actions = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    if actions == ("none",):
        return ()
    unknown = [action for action in actions if action not in ACTIONS]
    if unknown:
        raise ValueError(
            f"unknown on-drop action {unknown[0]!r}: choose from {', '.join(ACTIONS)} (comma-separated) or none"
        )
    return actions


@dataclass(frozen=True)
class MonitorConfig:
    """When to check and what to do when reliability drops."""

    every: int = 10  # MD steps between checks
    threshold: float = 0.5  # a check is flagged when P(reliable) < threshold
    patience: int = 3  # halt after this many consecutive flagged checks
    actions: tuple[str, ...] = ("dump", "halt")  # subset of ACTIONS
    # Adaptive checking: below `warn` (default: the threshold) check every `every_when_low`
    # steps until the reliability recovers. None = always `every`.
    every_when_low: int | None = None
    warn: float | None = None
    # Write the frame of every check at a multiple of this many steps to sampled.extxyz,
    # flagged or not. None = off.
    sample_every: int | None = None

    def __post_init__(self):
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"every must be a positive integer number of steps, got {self.every}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold}")
        if int(self.patience) != self.patience or self.patience < 1:
            raise ValueError(f"patience must be a positive integer number of checks, got {self.patience}")
        low = self.every_when_low
        if low is not None and (int(low) != low or low < 1 or self.every % low):
            raise ValueError(f"every-when-low must be a positive divisor of every ({self.every}), got {low}")
        if self.warn is not None and not self.threshold <= self.warn < 1.0:
            raise ValueError(f"warn must be a probability in [threshold, 1), got {self.warn}")
        sample = self.sample_every
        if sample is not None and (int(sample) != sample or sample < 1 or sample % self.every):
            # checks land on multiples of `every` (adaptive checking adds steps in between)
            raise ValueError(f"sample-every must be a positive multiple of every ({self.every}), got {sample}")
        object.__setattr__(self, "actions", parse_actions(self.actions))

    @property
    def warn_level(self) -> float:
        return self.threshold if self.warn is None else self.warn

    def interval_after(self, probability: float) -> int:
        """Steps to the next check after one that read `probability`."""
        if self.every_when_low is not None and not probability >= self.warn_level:
            return self.every_when_low
        return self.every

    def to_dict(self) -> dict:
        return {**asdict(self), "actions": list(self.actions)}


@dataclass(frozen=True)
class Check:
    """The monitor's decision at one check."""

    step: int
    probability: float
    logit: float
    flagged: bool  # probability < threshold
    consecutive_flagged: int  # flagged checks in a row, this one included
    dump: bool  # the frame should be written (flagged and 'dump' requested)
    halt: bool  # the run should stop now (patience reached and 'halt' requested)
    next_every: int  # steps to the next check (adaptive checking changes it)
    # (median, lower, upper) of the head's predicted error, criterion units; None: not predicted
    predicted_error: tuple[float, float, float] | None = None
    sample: bool = False  # the frame goes to sampled.extxyz (a multiple of sample_every)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable, or raise one-line PermissionError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe_md_write_test")
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"output directory {path} is not writable ({error.strerror or error}): choose another with --out"
        ) from None
    return path


def frame_extxyz_text(
    step: int,
    probability: float,
    logit: float,
    species: Sequence[str],
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool] | bool,
    importances: np.ndarray,
    predicted_error: Sequence[float] | None = None,
) -> str:
    """One complete extxyz frame as text (built in memory so it can be appended in one write)."""
    import ase
    import ase.io

    atoms = ase.Atoms(symbols=list(species), positions=np.asarray(positions, dtype=float), cell=cell, pbc=pbc)
    atoms.info[INFO_STEP] = int(step)
    atoms.info[INFO_RELIABILITY] = float(probability)
    atoms.info[INFO_LOGIT] = float(logit)
    if predicted_error is not None:
        atoms.info[INFO_PREDICTED_ERROR] = np.asarray(predicted_error, dtype=float)
    importances = np.asarray(importances, dtype=float).reshape(-1)
    if importances.shape[0] != len(atoms):
        raise ValueError(f"{importances.shape[0]} importances for a frame of {len(atoms)} atoms")
    atoms.arrays[ARRAY_IMPORTANCE] = importances
    buffer = io.StringIO()
    # parallel=False: by default ase.io.write under MPI is a collective (rank 0 writes, then
    # broadcasts), which deadlocks when only the writing rank calls it.
    ase.io.write(buffer, atoms, format="extxyz", parallel=False)
    return buffer.getvalue()


class ReliabilityMonitor:
    """Turns a stream of reliability checks into decisions and files.

    Only the writing rank (`writer=True`) touches files; every rank may run `check` on the
    same global probability and reaches the same decision.
    """

    def __init__(
        self,
        config: MonitorConfig,
        out_dir: str | os.PathLike | None,
        writer: bool = True,
        check_folder: bool = True,
        say=print,
    ):
        self.config = config
        self.writer = writer and out_dir is not None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checks_: list[Check] = []
        self.frames_written_ = 0
        self.frames_sampled_ = 0
        self.halted_at_: int | None = None
        self.extra_summary: dict = {}  # front ends add e.g. the restart file, steps/s
        self.every_now = config.every
        self._consecutive = 0
        self._log = None
        self._say = say if self.writer else (lambda *a, **k: None)
        if self.writer:
            ensure_writable_dir(self.out_dir)
            if check_folder:  # never append to (or mix with) an earlier run's files
                RunFolder(self.out_dir).check()
            self.log_path = self.out_dir / LOG_FILE
            self.flagged_path = self.out_dir / FLAGGED_FILE
            self.sampled_path = self.out_dir / SAMPLED_FILE
            self.plot_path = self.out_dir / PLOT_FILE
            self.summary_path = self.out_dir / SUMMARY_FILE

    def restore(self, records: list[dict], frames_written: int, frames_sampled: int = 0) -> None:
        """Continue after the checks of an earlier run (a resume): counts, interval, patience."""
        for record in records:
            self.checks_.append(Check(**{**record, "probability": _nan_if_none(record["probability"]),
                                         "logit": _nan_if_none(record["logit"]),
                                         "next_every": record.get("next_every", self.config.every),
                                         "predicted_error": _predicted_error(record.get("predicted_error")),
                                         "halt": False}))
        self._consecutive = self.checks_[-1].consecutive_flagged if self.checks_ else 0
        if self.checks_:
            self.every_now = self.config.interval_after(self.checks_[-1].probability)
        self.frames_written_ = frames_written
        self.frames_sampled_ = frames_sampled

    def _write_record(self, decision: Check) -> None:
        if self._log is None:  # opened at the first check: an --overwrite run starts clean
            self._log = open(self.log_path, "a", encoding="utf-8")
        record = asdict(decision)
        for key in ("probability", "logit"):  # JSON has no nan/inf
            if not math.isfinite(record[key]):
                record[key] = None
        if record["predicted_error"] is not None:
            record["predicted_error"] = [v if math.isfinite(v) else None for v in record["predicted_error"]]
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    # --- decisions ---------------------------------------------------------------------
    def check(
        self, step: int, probability: float, logit: float, predicted_error: Sequence[float] | None = None
    ) -> Check:
        """Record one check and decide; logs it (writer rank) before returning.
        `predicted_error`: (median, lower, upper) in the criterion's units, if the head has it."""
        probability = float(probability)
        flagged = not (probability >= self.config.threshold)  # nan counts as flagged
        self._consecutive = self._consecutive + 1 if flagged else 0
        halt = (
            "halt" in self.config.actions
            and self._consecutive >= self.config.patience
            and self.halted_at_ is None
        )
        decision = Check(
            step=int(step),
            probability=probability,
            logit=float(logit),
            flagged=flagged,
            consecutive_flagged=self._consecutive,
            dump=flagged and "dump" in self.config.actions,
            halt=halt,
            next_every=self.config.interval_after(probability),
            predicted_error=_predicted_error(predicted_error),
            sample=self.config.sample_every is not None and int(step) % self.config.sample_every == 0,
        )
        if halt:
            self.halted_at_ = decision.step
        self.checks_.append(decision)
        if self.writer:
            self._write_record(decision)
        if decision.next_every != self.every_now:
            self._say(
                f"PROBE: reliability {probability:.3g} at step {decision.step} "
                + (f"below {self.config.warn_level:g}" if decision.next_every < self.every_now else "recovered")
                + f": checking every {decision.next_every} step(s) from now",
                flush=True,
            )
            self.every_now = decision.next_every
        return decision

    def write_frame(
        self,
        decision: Check,
        species: Sequence[str],
        positions: np.ndarray,
        cell: np.ndarray,
        importances: np.ndarray,
        pbc: Sequence[bool] | bool = True,
        sampled: bool = False,
    ) -> None:
        """Append one complete frame to flagged.extxyz (sampled.extxyz when `sampled`), flushed
        and fsync'ed.

        The frame is rendered in memory first and appended in one go (io_utils.append_and_fsync),
        so a crash leaves either the whole frame or none of it.
        """
        if not self.writer:
            return
        text = frame_extxyz_text(
            decision.step, decision.probability, decision.logit, species, positions, cell, pbc, importances,
            decision.predicted_error,
        ).encode("utf-8")
        if sampled:
            append_and_fsync(self.sampled_path, text)
            self.frames_sampled_ += 1
        else:
            append_and_fsync(self.flagged_path, text)
            self.frames_written_ += 1

    def observe(
        self,
        step: int,
        probability: float,
        logit: float,
        importances: np.ndarray,
        species: Sequence[str],
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: Sequence[bool] | bool = True,
    ) -> Check:
        """`check` + `write_frame` when the decision says so (single-process front ends)."""
        decision = self.check(step, probability, logit)
        if decision.dump:
            self.write_frame(decision, species, positions, cell, importances, pbc)
        if decision.sample:
            self.write_frame(decision, species, positions, cell, importances, pbc, sampled=True)
        return decision

    @property
    def halted(self) -> bool:
        return self.halted_at_ is not None

    # --- end of run ----------------------------------------------------------------------
    def summary(self) -> dict:
        probabilities = np.array([c.probability for c in self.checks_], dtype=float)
        flagged = [c for c in self.checks_ if c.flagged]
        finite = probabilities[np.isfinite(probabilities)]
        summary = {
            "config": self.config.to_dict(),
            "checks": len(self.checks_),
            "first_step": self.checks_[0].step if self.checks_ else None,
            "last_step": self.checks_[-1].step if self.checks_ else None,
            "flagged_checks": len(flagged),
            "first_flagged_step": flagged[0].step if flagged else None,
            "min_reliability": float(finite.min()) if finite.size else None,
            "final_reliability": float(probabilities[-1]) if probabilities.size else None,
            "frames_written": self.frames_written_,
            "frames_sampled": self.frames_sampled_,
            "halted": self.halted,
            "halt_step": self.halted_at_,
        }
        if self.writer:
            summary["files"] = {
                "log": str(self.log_path),
                "flagged": str(self.flagged_path) if self.frames_written_ else None,
                "sampled": str(self.sampled_path) if self.frames_sampled_ else None,
                "plot": str(self.plot_path) if self.checks_ else None,
                "summary": str(self.summary_path),
            }
        summary.update(self.extra_summary)
        return summary

    def plot(self) -> Path | None:
        """Reliability against step, threshold and halt marked; PNG written atomically."""
        if not self.writer or not self.checks_:
            return None
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        steps = np.array([c.step for c in self.checks_])
        probabilities = np.array([c.probability for c in self.checks_])
        flagged = np.array([c.flagged for c in self.checks_])
        figure = Figure(figsize=(6.4, 3.6), dpi=120)
        axes = figure.subplots()
        axes.plot(steps, probabilities, color="tab:blue", lw=1.2, label="P(reliable)")
        axes.scatter(steps[flagged], probabilities[flagged], color="tab:red", s=10, zorder=3, label="flagged")
        axes.axhline(self.config.threshold, color="gray", ls="--", lw=1, label=f"threshold {self.config.threshold:g}")
        if self.halted_at_ is not None:
            axes.axvline(self.halted_at_, color="black", lw=1, label=f"halt at step {self.halted_at_}")
        axes.set_xlabel("MD step")
        axes.set_ylabel("P(MLIP reliable)")
        axes.set_ylim(-0.03, 1.03)
        axes.legend(loc="lower left", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        atomic_write_bytes(self.plot_path, buffer.getvalue())
        return self.plot_path

    def finish(self, print_summary: bool = True) -> dict:
        """Close the log, write plot and summary.json; returns (and prints) the summary."""
        if self._log is not None:
            self._log.close()
            self._log = None
        summary = self.summary()
        if self.writer:
            self.plot()
            atomic_write_bytes(self.summary_path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
            if print_summary:
                print(format_summary(summary), flush=True)
        return summary


# summary key -> how the console names it (front ends add these; absent ones are skipped)
SUMMARY_LINES: Final[tuple[tuple[str, str], ...]] = (
    ("restart", "restart"),
    ("last_trusted_restart", "last trusted restart"),
    ("last_trusted_step", "last trusted step"),
    ("stopped_by", "stopped by"),
    ("temperature_k", "temperature when it stopped (K)"),
    ("steps_per_second", "steps per second"),
    ("wall_seconds", "wall seconds"),
)


def format_summary(summary: dict) -> str:
    """A few human-readable lines."""
    min_rel = summary["min_reliability"]
    first = summary["first_flagged_step"]
    lines = [
        f"PROBE monitor: {summary['checks']} checks (steps {summary['first_step']}..{summary['last_step']}), "
        f"{summary['flagged_checks']} flagged" + (f" (first at step {first})" if first is not None else "")
        + f", min reliability {'n/a' if min_rel is None else f'{min_rel:.3g}'}",
        f"  frames written: {summary['frames_written']}"
        + (f" (+ {summary['frames_sampled']} sampled)" if summary.get("frames_sampled") else "") + "; "
        + (f"halted at step {summary['halt_step']}" if summary["halted"] else "ran to completion"),
    ]
    for key, label in SUMMARY_LINES:
        if summary.get(key) is not None:
            lines.append(f"  {label}: {summary[key]}")
    for name, path in (summary.get("files") or {}).items():
        if path:
            lines.append(f"  {name}: {path}")
    return "\n".join(lines)


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


def _predicted_error(values) -> tuple[float, float, float] | None:
    """(median, lower, upper) as floats; None when absent or all NaN (a head without it). The
    log writes an unbounded upper bound (beyond the errors the head was trained on) as null."""
    if values is None:
        return None
    median, lower, upper = (_nan_if_none(v) for v in values)
    if math.isnan(median) and math.isnan(lower) and math.isnan(upper):
        return None
    return median, lower, float("inf") if values[2] is None and not math.isnan(median) else upper
