"""The output folder of a monitored run: what is in it, and what a new run may do to it.

A previous run's results are never lost by accident:
  fresh      the folder is empty (or new); anything of an earlier run there is refused
  overwrite  the earlier run's files are removed, but only once the new input has got as far
             as its first `run` (a rerun that fails at `read_data` leaves them alone)
  resume     continue from one of its restarts: checks and frames after the restart's step
             move to superseded.* (nothing deleted) and the new ones are appended
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Iterator

from probe_md.io_utils import atomic_write_text

LOG_FILE: Final[str] = "reliability.jsonl"
FLAGGED_FILE: Final[str] = "flagged.extxyz"
SAMPLED_FILE: Final[str] = "sampled.extxyz"  # every N-th step's frame, flagged or not (--sample-every)
PLOT_FILE: Final[str] = "reliability.png"
SUMMARY_FILE: Final[str] = "summary.json"
HALT_RESTART: Final[str] = "halt.restart"
INTERRUPT_RESTART: Final[str] = "interrupted.restart"
TRUSTED_RESTART: Final[str] = "last_trusted.restart"
LAMMPS_LOG: Final[str] = "log.lammps"
PENDING_LAMMPS_LOG: Final[str] = "log.lammps.pending"  # an --overwrite run's log until it starts
SUPERSEDED_LOG: Final[str] = "superseded.jsonl"
SUPERSEDED_FLAGGED: Final[str] = "superseded.extxyz"
SUPERSEDED_SAMPLED: Final[str] = "superseded_sampled.extxyz"

# Files that make a folder "hold an earlier run".
RUN_FILES: Final[tuple[str, ...]] = (
    LOG_FILE, FLAGGED_FILE, PLOT_FILE, SUMMARY_FILE, HALT_RESTART, INTERRUPT_RESTART,
    TRUSTED_RESTART, LAMMPS_LOG, SUPERSEDED_LOG, SUPERSEDED_FLAGGED, SAMPLED_FILE, SUPERSEDED_SAMPLED,
)
MODES: Final[tuple[str, ...]] = ("fresh", "overwrite", "resume")


@dataclass(frozen=True)
class RunFolder:
    """The output folder and how this run treats what is already there."""

    path: Path
    mode: str = "fresh"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"run folder mode {self.mode!r}: choose from {', '.join(MODES)}")

    def file(self, name: str) -> Path:
        return self.path / name

    def earlier_run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def check(self) -> None:
        """Before any work: refuse to start a fresh run over an earlier one (one line)."""
        earlier = self.earlier_run_files()
        if self.mode == "fresh" and earlier:
            raise FileExistsError(
                f"{self.path} holds an earlier run ({', '.join(earlier[:4])}"
                f"{', ...' if len(earlier) > 4 else ''}): pass --overwrite to replace it or choose "
                f"another --out (`probe-md run --from {self.path / TRUSTED_RESTART}` continues it)"
            )

    def lammps_log_args(self) -> list[str]:
        """LAMMPS command-line log arguments; `log_command` completes them for a resume."""
        if self.mode == "resume":
            return ["-log", "none"]
        if self.mode == "overwrite":
            return ["-log", str(self.file(PENDING_LAMMPS_LOG))]
        return ["-log", str(self.file(LAMMPS_LOG))]

    def log_command(self) -> str | None:
        """A resumed run appends to the earlier LAMMPS log."""
        return f"log {self.file(LAMMPS_LOG)} append" if self.mode == "resume" else None

    def take_over(self) -> None:
        """The new run starts (its input got to the first `run`): an --overwrite run removes
        the earlier results now, and its pending LAMMPS log becomes log.lammps."""
        if self.mode != "overwrite":
            return
        for name in RUN_FILES:
            if name != LAMMPS_LOG and (self.path / name).exists():
                (self.path / name).unlink()
        pending = self.file(PENDING_LAMMPS_LOG)
        if pending.exists():
            os.replace(pending, self.file(LAMMPS_LOG))  # LAMMPS keeps writing to the same file


# ----------------------------------------------------------------------------- resuming
def read_check_records(path: Path) -> list[dict]:
    """The JSON records of a reliability log; a torn last line (a kill mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def extxyz_frames(text: str) -> Iterator[str]:
    """Whole frames of an extxyz text (count line, comment line, count atom lines); a torn
    last frame is not yielded."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        try:
            count = int(lines[start].split()[0])
        except (ValueError, IndexError):
            return
        end = start + 2 + count
        if end > len(lines):
            return
        yield "".join(lines[start:end])
        start = end


def frame_step(frame: str) -> int | None:
    """The `step=` of a frame's comment line."""
    comment = frame.splitlines()[1]
    for word in comment.split():
        if word.startswith("step="):
            return int(word[len("step="):])
    return None


def supersede_after(folder: Path, step: int) -> tuple[list[dict], int, int]:
    """Resume at `step`: checks and frames after it move to superseded.* (appended); returns
    the kept check records and the numbers of kept flagged and sampled frames. Rewrites are atomic."""
    records = read_check_records(folder / LOG_FILE)
    kept = [r for r in records if r["step"] <= step]
    later = [r for r in records if r["step"] > step]
    if later:
        _append_text(folder / SUPERSEDED_LOG, "".join(json.dumps(r) + "\n" for r in later))
    if records:
        atomic_write_text(folder / LOG_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    flagged = _supersede_frames_after(folder / FLAGGED_FILE, folder / SUPERSEDED_FLAGGED, step)
    sampled = _supersede_frames_after(folder / SAMPLED_FILE, folder / SUPERSEDED_SAMPLED, step)
    return kept, flagged, sampled


def _supersede_frames_after(frames_file: Path, superseded: Path, step: int) -> int:
    """Move the frames of `frames_file` after `step` to `superseded`; returns how many stay."""
    if not frames_file.exists():
        return 0
    frames = list(extxyz_frames(frames_file.read_text(encoding="utf-8")))
    kept_frames = [f for f in frames if (frame_step(f) or 0) <= step]
    later_frames = [f for f in frames if (frame_step(f) or 0) > step]
    if later_frames:
        _append_text(superseded, "".join(later_frames))
    atomic_write_text(frames_file, "".join(kept_frames))
    return len(kept_frames)


def _append_text(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
