"""last_trusted.restart: the state of the last check whose reliability was above the threshold.

LAMMPS writes a restart at every check step (`restart N <folder>/.probe_trusted.*.restart`,
at the end of the step, after the check in the same step). At a later callback the file is
complete: if its check passed it replaces last_trusted.restart in one rename (fsync'ed
first), otherwise it is removed. So last_trusted.restart is always a whole file of a trusted
step, whatever moment the run is killed at. Only the rank that writes files calls this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from probe_md.lammps.run_folder import TRUSTED_RESTART

PENDING_PREFIX: Final[str] = ".probe_trusted."


class TrustedRestarts:
    """Keeps last_trusted.restart up to date from the restarts LAMMPS writes at check steps."""

    def __init__(self, folder: Path, every: int, enabled: bool = True):
        self.folder = folder
        self.every = every
        self.enabled = enabled
        self.path = folder / TRUSTED_RESTART
        self.step: int | None = None  # step of last_trusted.restart written by this run
        self._verdicts: dict[int, bool] = {}  # step -> its check passed

    def command(self) -> str | None:
        """The LAMMPS `restart` command that writes the candidates (None when disabled)."""
        if not self.enabled:
            return None
        return f"restart {self.every} {self.folder / PENDING_PREFIX}*.restart"

    def start(self) -> None:
        """Before the run (writing rank): a killed run's candidates, maybe half-written, go."""
        self._remove_candidates()

    def pending_path(self, step: int) -> Path:
        return self.folder / f"{PENDING_PREFIX}{step}.restart"

    def record(self, step: int, passed: bool) -> None:
        """The verdict of the check at `step` (its restart, if any, is written after it)."""
        if self.enabled and step % self.every == 0:
            self._verdicts[step] = passed

    def promote_written(self) -> None:
        """Act on every candidate that LAMMPS has finished writing (cheap when there is none)."""
        if not self._verdicts:
            return
        for step in sorted(self._verdicts):
            candidate = self.pending_path(step)
            if not candidate.exists():
                continue
            passed = self._verdicts.pop(step)
            if passed and (self.step is None or step > self.step):
                with open(candidate, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(candidate, self.path)
                self.step = step
            else:
                candidate.unlink()

    def finish(self) -> None:
        """After the run: promote what was written, forget verdicts whose file never came."""
        self.promote_written()
        self._verdicts.clear()
        self._remove_candidates()

    def _remove_candidates(self) -> None:
        for candidate in self.folder.glob(f"{PENDING_PREFIX}*.restart"):
            candidate.unlink()
