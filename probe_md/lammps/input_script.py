"""Reading a LAMMPS input the driver feeds command by command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Sequence

_RELIABILITY_COMPUTE = re.compile(r"^\s*compute\s+(\S+)\s+\S+\s+probe/reliability\b(.*)$")
PLUGIN_STYLES: Final = re.compile(r"\bprobe/(mace|reliability)\b")
PLUGIN_LOAD: Final = re.compile(r"^\s*plugin\s+load\b", re.M)


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


def without_comments(commands: Sequence[str]) -> str:
    return "\n".join(c.split("#", 1)[0] for c in commands)


def uses_plugin_without_loading_it(commands: Sequence[str]) -> bool:
    text = without_comments(commands)
    return bool(PLUGIN_STYLES.search(text)) and not PLUGIN_LOAD.search(text)


def reliability_compute(commands: Sequence[str]) -> tuple[str, str | None] | None:
    """(ID, its `every` value or None) of the input's own probe/reliability compute."""
    for command in commands:
        match = _RELIABILITY_COMPUTE.match(command.split("#", 1)[0])
        if match:
            words = match.group(2).split()
            every = words[words.index("every") + 1] if "every" in words[:-1] else None
            return match.group(1), every
    return None


def has_command(commands: Sequence[str], word: str) -> bool:
    return any(first_word(c) == word for c in commands)
