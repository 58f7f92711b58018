"""Reference labelling of a frame pool with any ASE calculator, resumable after interruption.

Every labelled frame is appended whole to `<stem>.partial.extxyz` (one write, fsync'ed) with a
hash of its structure in `info['frame_key']`. A rerun reads that file, skips frames already
done and labels the rest, so no frame is labelled twice and none is lost. Per-frame failures
are logged to `<stem>.failures.jsonl` and retried on the next run. When the pass ends,
`<output>` is written atomically in input order; the partial file is removed once nothing
failed. Labels follow mace's conventions: info['REF_energy'] (eV), arrays['REF_forces']
(eV/Å) and, for periodic cells when the calculator gives it, info['REF_stress'] (eV/Å³, Voigt-6).
"""

from __future__ import annotations

import importlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final, Iterator, Sequence

import ase
import ase.io
import numpy as np
from tqdm.auto import tqdm

from probe_md.io_utils import append_and_fsync, check_output_path
from probe_md.loop.collect import INFO_RUN, structure_key, write_extxyz_atomic
from probe_md.structures import ReferenceKeys

INFO_FRAME_KEY: Final[str] = "frame_key"  # str, sha256 of species/positions/cell/pbc
INFO_LABEL_CALCULATOR: Final[str] = "label_calculator"  # str, the --calculator spec

CalculatorFactory = Callable[[], object]


@dataclass(frozen=True)
class LabelFiles:
    """The files one labelling job owns, all derived from the output path."""

    output: Path

    @property
    def partial(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.partial{self.output.suffix or '.extxyz'}")

    @property
    def failures(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.failures.jsonl")


@dataclass
class LabelResult:
    total: int  # input frames
    already_done: int  # distinct frames found labelled in the partial file (resumed)
    labelled_now: int  # distinct frames labelled in this pass
    failures: list[dict] = field(default_factory=list)  # one record per failed frame
    written: int = 0  # frames in the output file
    files: LabelFiles | None = None

    def summary(self) -> str:
        text = (
            f"{self.written} of {self.total} frames labelled ({self.labelled_now} now, "
            f"{self.already_done} resumed from {self.files.partial.name if self.files else 'partial file'})"
        )
        if self.failures:
            text += f"; {len(self.failures)} FAILED (listed in {self.files.failures}; rerun to retry them)"
        return text


# ----------------------------------------------------------------------------- calculators
def calculator_factory(spec: str, kwargs: dict | None = None) -> CalculatorFactory:
    """`cu-snap` (a named reference) or `module:Class` -> a function making fresh calculators."""
    kwargs = dict(kwargs or {})
    from probe_md.reference import REFERENCE_CALCULATORS

    if spec in REFERENCE_CALCULATORS:
        return lambda: REFERENCE_CALCULATORS[spec](**kwargs)
    if ":" not in spec:
        known = ", ".join(sorted(REFERENCE_CALCULATORS))
        raise ValueError(
            f"--calculator {spec!r} is neither a named reference ({known}) nor module:Class "
            "(e.g. ase.calculators.emt:EMT)"
        )
    module_name, class_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--calculator {spec}: cannot import {module_name} ({error})") from None
    calculator_class = getattr(module, class_name, None)
    if calculator_class is None or not callable(calculator_class):
        raise ValueError(f"--calculator {spec}: {module_name} has no class {class_name}")
    return lambda: calculator_class(**kwargs)


def parse_calc_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--calc-kwargs is not valid JSON ({error.msg}): {text}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--calc-kwargs must be a JSON object like '{{\"key\": 1}}', got {text}")
    return value


# ----------------------------------------------------------------------------- partial file
def frame_text(atoms: ase.Atoms) -> str:
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    return buffer.getvalue()


def read_partial(path: Path) -> tuple[list[ase.Atoms], int]:
    """Complete frames of a partial file and the byte length they occupy.

    A frame is complete when all its `natoms + 2` lines are there and newline-terminated;
    anything after the last complete frame is a torn write from an interrupted run.
    """
    if not path.is_file():
        return [], 0
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    good_lines = 0
    good_bytes = 0
    i = 0
    while i < len(lines):
        try:
            natoms = int(lines[i].strip())
        except ValueError:
            break
        end = i + natoms + 2
        if end > len(lines) or not lines[end - 1].endswith(b"\n"):
            break
        good_bytes += sum(len(line) for line in lines[i:end])
        good_lines = end
        i = end
    if good_lines == 0:
        return [], 0
    text = b"".join(lines[:good_lines]).decode("utf-8")
    frames = ase.io.read(io.StringIO(text), index=":", format="extxyz")
    return list(frames), good_bytes


# ----------------------------------------------------------------------------- labelling
def label_one(atoms: ase.Atoms, calculator, keys: ReferenceKeys = ReferenceKeys()) -> ase.Atoms:
    """A copy of `atoms` with reference energy, forces (and stress) from `calculator`."""
    labelled = atoms.copy()
    labelled.calc = calculator
    energy = float(labelled.get_potential_energy())
    forces = np.array(labelled.get_forces(), dtype=float)
    stress = None
    if np.all(labelled.pbc) and "stress" in getattr(calculator, "implemented_properties", ()):
        stress = np.array(labelled.get_stress(voigt=True), dtype=float)
    labelled.calc = None
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise ValueError("calculator returned a non-finite energy or forces")
    if forces.shape != (len(labelled), 3):
        raise ValueError(f"calculator returned forces of shape {forces.shape} for {len(labelled)} atoms")
    labelled.info[keys.energy] = energy
    labelled.arrays[keys.forces] = forces
    if stress is not None and np.all(np.isfinite(stress)):
        labelled.info[keys.stress] = stress
    return labelled


def _failure_record(index: int, key: str, atoms: ase.Atoms, error: BaseException) -> dict:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {
        "index": index,
        INFO_FRAME_KEY: key,
        INFO_RUN: atoms.info.get(INFO_RUN),
        "step": atoms.info.get("step"),
        "error": f"{type(error).__name__}: {message}"[:500],
    }


def _finished_output(path: Path) -> list[ase.Atoms]:
    """Frames of an earlier, completed pass (so rerunning a finished job labels nothing)."""
    if not path.is_file():
        return []
    try:
        return list(ase.io.read(path, index=":", format="extxyz"))
    except Exception:  # an unreadable old output is simply replaced
        return []


def label_frames(
    frames: Sequence[ase.Atoms],
    make_calculator: CalculatorFactory,
    output: str | os.PathLike,
    calculator_name: str = "",
    keys: ReferenceKeys = ReferenceKeys(),
    progress: bool = True,
) -> LabelResult:
    """Label every frame not yet in the partial file; write `output` when the pass ends.

    A KeyboardInterrupt (or any BaseException from the calculator) propagates after the
    frames labelled so far are safely on disk; rerunning resumes.
    """
    files = LabelFiles(Path(output))
    check_output_path(files.output, "labelled output file")
    frame_keys = [structure_key(atoms) for atoms in frames]
    done = labelled_so_far(files, calculator_name)
    already_done = len(set(frame_keys) & set(done))
    result = LabelResult(total=len(frames), already_done=already_done, labelled_now=0, files=files)
    todo = _first_unlabelled(frame_keys, done)
    # Failed frames are retried on every run, so the failures file describes this pass only.
    with open(files.failures, "w", encoding="utf-8") as failures_log, tqdm(
        total=already_done + len(todo), initial=already_done, desc="label", unit="frame", disable=not progress
    ) as bar:
        for key, outcome in _label_each(frames, todo, make_calculator, keys):
            bar.update(1)
            if isinstance(outcome, dict):  # a failure record
                result.failures.append(outcome)
                failures_log.write(json.dumps(outcome) + "\n")
                failures_log.flush()
                continue
            outcome.info[INFO_FRAME_KEY] = key
            if calculator_name:
                outcome.info[INFO_LABEL_CALCULATOR] = calculator_name
            append_and_fsync(files.partial, frame_text(outcome).encode("utf-8"))
            done[key] = outcome
            result.labelled_now += 1
    _write_output(files, [done[key] for key in frame_keys if key in done], result)
    return result


def labelled_so_far(files: LabelFiles, calculator_name: str) -> dict[str, ase.Atoms]:
    """{frame key: labelled frame} from an earlier finished output and the partial file, by this
    calculator only (labels of another calculator are redone). Drops a torn last frame."""
    done_frames, good_bytes = read_partial(files.partial)
    if files.partial.is_file() and files.partial.stat().st_size != good_bytes:
        os.truncate(files.partial, good_bytes)  # drop a torn last frame before appending
    done: dict[str, ase.Atoms] = {}
    for atoms in _finished_output(files.output) + done_frames:
        key = atoms.info.get(INFO_FRAME_KEY)
        if isinstance(key, str) and atoms.info.get(INFO_LABEL_CALCULATOR, calculator_name) == calculator_name:
            done.setdefault(key, atoms)
    return done


def _first_unlabelled(frame_keys: Sequence[str], done: dict[str, ase.Atoms]) -> list[tuple[int, str]]:
    """(first index, key) of every distinct frame not labelled yet."""
    todo: dict[str, int] = {}
    for index, key in enumerate(frame_keys):
        if key not in done:
            todo.setdefault(key, index)
    return [(index, key) for key, index in todo.items()]


def _label_each(
    frames: Sequence[ase.Atoms], todo: Sequence[tuple[int, str]], make_calculator: CalculatorFactory,
    keys: ReferenceKeys,
) -> Iterator[tuple[str, ase.Atoms | dict]]:
    """(key, labelled copy) or, when the calculator fails on it, (key, failure record) per frame.

    One calculator labels frame after frame; after a failure a fresh one is made, as the old
    one may be in a bad state. One bad frame never stops the others.
    """
    calculator = None
    for index, key in todo:
        atoms = frames[index].copy()
        atoms.calc = None
        try:
            if calculator is None:
                calculator = make_calculator()
            labelled = label_one(atoms, calculator, keys)
        except Exception as error:
            calculator = None
            yield key, _failure_record(index, key, atoms, error)
            continue
        yield key, labelled


def _write_output(files: LabelFiles, labelled_frames: list[ase.Atoms], result: LabelResult) -> None:
    """The output in input order; the partial and failures files go once nothing failed."""
    if labelled_frames:
        write_extxyz_atomic(files.output, labelled_frames)
    result.written = len(labelled_frames)
    if not result.failures:
        files.failures.unlink(missing_ok=True)
        if labelled_frames:
            files.partial.unlink(missing_ok=True)
