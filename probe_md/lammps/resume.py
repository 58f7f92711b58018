"""Continue an input from one of its restarts (`probe-md run in.lammps --from R.restart`).

The input runs again, command by command, with three changes:
  - its system definition (the first read_data / create_box / read_restart) becomes
    `read_restart R`, and the commands that would change the restored atoms (create_atoms,
    velocity, displace_atoms, set, reset_timestep, minimize, ...) are skipped;
  - runs the restart is already past are skipped;
  - the run the restart falls in runs its remaining steps with `start`/`stop` set to the
    original run's, so ramped fixes (fix nvt temp 300 2500 ...) continue where they were.
Everything else (pair style, fixes, computes, thermo) is run as written: fixes with the same
ID pick up their state (e.g. the Nosé-Hoover thermostat) from the restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final

SYSTEM_DEFINITIONS: Final[frozenset[str]] = frozenset({"read_data", "create_box", "read_restart"})
ATOM_CHANGES: Final[frozenset[str]] = frozenset({
    "create_atoms", "delete_atoms", "displace_atoms", "velocity", "set", "replicate", "read_dump",
    "reset_timestep", "minimize", "change_box", "read_data", "create_box", "read_restart",
})
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w)")


@dataclass
class ResumedInput:
    """Rewrites an input's commands, in order, to continue from `restart`."""

    restart: Path
    restored_step: int | None = None  # set by the driver once read_restart has run
    original_step: int = 0  # where the original input's timestep would be here
    skipped: list[str] = field(default_factory=list)
    _restart_read: bool = False

    def rewrite(self, command: str, word: str) -> str | None:
        """The command to run instead of a non-`run` command (None = skip it)."""
        if word == "reset_timestep":
            self.original_step = int(command.split()[1])
        if word in SYSTEM_DEFINITIONS and not self._restart_read:
            self._restart_read = True
            return f"read_restart {self.restart}"
        if word in ATOM_CHANGES:
            self.skipped.append(" ".join(command.split()))
            return None
        return command

    def rewrite_run(self, command: str, expand: Callable[[str], str]) -> str | None:
        """The `run` to do instead (None when the restart is already past its end)."""
        if self.restored_step is None:
            raise ValueError(f"cannot resume: the input reaches `{command.strip()}` before defining the system")
        words = expand(command.split("#", 1)[0]).split()
        steps, options = int(words[1]), words[2:]
        if "every" in options:
            raise ValueError("cannot resume an input whose run uses `every`: split it into several runs")
        begin = self.original_step
        end = steps if "upto" in options else begin + steps
        self.original_step = end
        if end <= self.restored_step:
            self.skipped.append(" ".join(command.split()))
            return None
        if begin >= self.restored_step:
            return command
        start, stop = _keyword(options, "start", begin), _keyword(options, "stop", end)
        kept = _without(options, ("upto",), ("start", "stop"))
        return " ".join(["run", str(end - self.restored_step), "start", str(start), "stop", str(stop), *kept])


def _keyword(options: list[str], name: str, default: int) -> int:
    return int(options[options.index(name) + 1]) if name in options else default


def _without(options: list[str], flags: tuple[str, ...], valued: tuple[str, ...]) -> list[str]:
    kept, index = [], 0
    while index < len(options):
        if options[index] in valued:
            index += 2
            continue
        if options[index] not in flags:
            kept.append(options[index])
        index += 1
    return kept


def expand_variables(text: str, lookup: Callable[[str], object]) -> str:
    """Substitute ${name} and $x the way LAMMPS does for the values we must read ourselves."""
    if "$(" in text:
        raise ValueError(f"cannot resume through an immediate expression in `{text.strip()}`: use a variable")

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        found = lookup(name)
        if found is None:
            raise ValueError(f"cannot resume: variable {name} in `{text.strip()}` is not defined")
        if isinstance(found, float) and found.is_integer():
            return str(int(found))
        return str(found)

    return _VARIABLE.sub(value, text)
