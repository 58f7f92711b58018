"""Gather flagged frames from MD runs and pick a diverse, duplicate-free pool to label.

Each run folder written by `probe-md run`/`demo` holds `flagged.extxyz` (see
`probe_md.lammps.monitor`). Frames where atoms collapsed (an MD blow-up) are dropped. The
rest are described in the frozen feature space of the MACE
backbone by the per-structure mean and max of the invariant per-atom features; exact
copies (same numbers, positions, cell) are dropped by hash, then farthest-point sampling
picks frames one by one, starting from the least reliable, each as far as possible from
those already picked. Frames closer than `min_distance` to a picked one are near-duplicates.

With a `CarveConfig` (`collect --carve`), each frame is first cut into small structures around
its most important atoms (probe_md.loop.carve); those are de-duplicated and sampled the same
way, described by their core atoms only (buffer atoms near the cut see vacuum).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Sequence

import ase
import ase.io
import numpy as np

from probe_md.backbone.base import Backbone, StructurePrediction
from probe_md.features import predict_dataset
from probe_md.io_utils import atomic_write_text
from probe_md.lammps.monitor import ARRAY_IMPORTANCE, FLAGGED_FILE, INFO_LOGIT, INFO_RELIABILITY, INFO_STEP
from probe_md.loop.carve import ARRAY_CORE, CarveConfig, carve_frames, check_importance

# provenance written into every collected frame's info (step/reliability/logit come from the run)
INFO_RUN: Final[str] = "run"  # str, the run folder (or file) the frame was read from
INFO_COLLECT_ORDER: Final[str] = "collect_order"  # int, 0 = picked first by farthest-point sampling

# Frames whose descriptors differ by less than this (RMS over descriptor columns, in units of
# each feature's spread over the pooled atoms) count as the same configuration.
DEFAULT_MIN_DISTANCE: Final[float] = 0.01
# Frames where two atoms are closer than this fraction of the sum of their covalent radii are
# MD blow-ups (the MLIP let atoms collapse): labelling them wastes reference calls and their
# huge forces would swamp a fine-tune, so they are dropped (DP-GEN's "failed" frames).
DEFAULT_MIN_BOND_FRACTION: Final[float] = 0.6
POSITION_DECIMALS: Final[int] = 6  # Å; exact-duplicate hashing ignores float noise below 1e-6 Å


@dataclass
class CollectResult:
    """What `collect_flagged` read, dropped and kept."""

    frames: list[ase.Atoms]  # selected, in selection order, provenance in info
    read: int  # frames read from all runs
    non_finite: int  # dropped: NaN/inf positions, cell or importances (named in warnings)
    exact_duplicates: int  # dropped by hash
    unphysical: int  # dropped: atoms closer than min_bond_fraction x covalent-radii sum
    near_duplicates: int  # dropped by min_distance
    not_selected: int  # distinct frames left out because of max_frames
    frames_per_run: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    carved: "CarveCounts | None" = None  # with --carve: what the frames were cut into

    def summary(self) -> str:
        what = "frames" if self.carved is None else "regions"
        text = (
            f"read {self.read} flagged frames from {len(self.frames_per_run)} run(s); dropped "
            f"{self.non_finite} non-finite, {self.unphysical} with collapsed atoms, "
            f"{self.exact_duplicates} exact and {self.near_duplicates} near duplicates; "
            f"{self.not_selected} distinct {what} not selected (--max); kept {len(self.frames)}"
        )
        if self.carved is not None:
            kept_atoms = sum(len(a) for a in self.frames)
            text += (
                f" (carved {self.carved.regions} regions from {self.carved.frames} frames; {kept_atoms} atoms "
                f"to label instead of {self.carved.frame_atoms} in the frames whole)"
            )
        return text


@dataclass(frozen=True)
class CarveCounts:
    frames: int  # physical frames carved
    frame_atoms: int  # atoms in those frames (what labelling them whole costs)
    regions: int  # carved structures, before de-duplication


def flagged_path(run: str | os.PathLike) -> Path:
    """A run folder's flagged-frames file; a file path is taken as the frames file itself."""
    run = Path(run)
    return run / FLAGGED_FILE if run.is_dir() else run


def read_flagged_frames(run: str | os.PathLike) -> tuple[list[ase.Atoms], str | None]:
    """The complete frames of one run (with `info['run']`), and a warning when something was off.

    A run that flagged nothing has no flagged file: that is an empty list, not an error.
    A torn last frame (a run killed mid-write) is skipped with a warning.
    """
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"run folder {run} does not exist")
    path = flagged_path(run)
    if not path.is_file() or path.stat().st_size == 0:
        return [], f"{run}: no flagged frames ({path.name} absent or empty)"
    frames: list[ase.Atoms] = []
    warning = None
    try:
        for atoms in ase.io.iread(path, index=":", format="extxyz"):
            frames.append(atoms)
    except Exception as error:  # ase raises many types for a torn or malformed frame
        warning = f"{path}: stopped reading after {len(frames)} frames ({type(error).__name__}: {error})"
    for atoms in frames:
        atoms.info.setdefault(INFO_RUN, str(run))
    return frames, warning


def non_finite_fields(atoms: ase.Atoms) -> list[str]:
    """Which of positions, cell and per-atom importances hold NaN or inf (a diverged run)."""
    fields = {"positions": atoms.positions, "cell": atoms.cell.array}
    if ARRAY_IMPORTANCE in atoms.arrays:
        fields[ARRAY_IMPORTANCE] = atoms.arrays[ARRAY_IMPORTANCE]
    return [name for name, values in fields.items() if not np.all(np.isfinite(values))]


def _finite_frames(run: str | os.PathLike, frames: list[ase.Atoms], warnings: list[str]) -> list[ase.Atoms]:
    """`frames` without the non-finite ones, each dropped frame named in `warnings`."""
    kept = []
    for index, atoms in enumerate(frames):
        bad = non_finite_fields(atoms)
        if bad:
            warnings.append(
                f"{flagged_path(run)}: dropped frame {index} (step {atoms.info.get(INFO_STEP, '?')}): "
                f"non-finite {', '.join(bad)}"
            )
        else:
            kept.append(atoms)
    return kept


def structure_key(atoms: ase.Atoms, decimals: int = POSITION_DECIMALS) -> str:
    """Hash of species, positions (rounded), cell and pbc: equal for copies of one frame."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    # + 0.0 turns -0.0 into 0.0 so rounding noise around zero hashes alike
    digest.update(np.ascontiguousarray(np.round(atoms.positions, decimals) + 0.0).tobytes())
    digest.update(np.ascontiguousarray(np.round(atoms.cell.array, decimals) + 0.0).tobytes())
    digest.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
    return digest.hexdigest()


def closest_pair_fraction(atoms: ase.Atoms) -> float:
    """min over atom pairs of distance / (covalent radius i + covalent radius j); inf if none."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    radii = covalent_radii[atoms.numbers]
    first, second, distances = neighbor_list("ijd", atoms, 2.0 * float(radii.max()))
    if len(distances) == 0:
        return float("inf")
    return float(np.min(distances / (radii[first] + radii[second])))


def pooled_descriptors(features: Sequence[np.ndarray]) -> np.ndarray:
    """[n_structures, 2F]: mean and max over atoms of each structure's invariant features
    ([n_atoms, F]), each feature divided by its standard deviation over all pooled atoms so
    no channel dominates."""
    stacked = np.concatenate(features)
    scale = stacked.std(axis=0)
    scale = np.where(scale > 1e-12 * max(scale.max(), 1e-300), scale, 1.0)  # constant channels
    rows = [np.concatenate([f.mean(axis=0) / scale, f.max(axis=0) / scale]) for f in features]
    return np.asarray(rows)


def described_atoms(prediction: StructurePrediction, atoms: ase.Atoms) -> np.ndarray:
    """The features that describe a structure: its core atoms' when it was carved, else all."""
    if ARRAY_CORE in atoms.arrays:
        return prediction.features[np.asarray(atoms.arrays[ARRAY_CORE], dtype=bool)]
    return prediction.features


def farthest_point_sampling(
    descriptors: np.ndarray,
    max_count: int | None = None,
    min_distance: float = 0.0,
    start: int = 0,
) -> tuple[list[int], np.ndarray]:
    """Greedy farthest-point order over rows of `descriptors`.

    Returns (selected indices in selection order, distance of every row to its nearest
    selected row). Stops after `max_count` picks or when every remaining row lies within
    `min_distance` of a selected one. Distances are RMS over columns (Euclidean / sqrt(D)).
    """
    descriptors = np.asarray(descriptors, dtype=float)
    n = len(descriptors)
    if n == 0:
        return [], np.zeros(0)
    if not 0 <= start < n:
        raise ValueError(f"start index {start} outside 0..{n - 1}")
    limit = n if max_count is None else min(int(max_count), n)
    width = np.sqrt(max(descriptors.shape[1], 1))
    selected = [start]
    nearest = np.linalg.norm(descriptors - descriptors[start], axis=1) / width
    while len(selected) < limit:
        candidate = int(np.argmax(nearest))
        if nearest[candidate] < min_distance or nearest[candidate] == 0.0:
            break
        selected.append(candidate)
        nearest = np.minimum(nearest, np.linalg.norm(descriptors - descriptors[candidate], axis=1) / width)
    return selected, nearest


def collect_flagged(
    runs: Sequence[str | os.PathLike],
    backbone: Backbone,
    max_frames: int | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    progress: bool = True,
    min_bond_fraction: float = DEFAULT_MIN_BOND_FRACTION,
    carve: CarveConfig | None = None,
) -> CollectResult:
    """Read every run's flagged frames, drop duplicates and keep a diverse subset (of the
    frames, or with `carve` of the structures carved from them)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max must be a positive number of frames, got {max_frames}")
    if min_distance < 0:
        raise ValueError(f"--min-distance must be >= 0, got {min_distance}")
    frames, read, per_run, warnings = read_runs(runs)
    if carve is not None:
        check_importance(frames)
        carve = carve.with_receptive_field(backbone.cutoff, backbone.num_layers)
    physical = [a for a in frames if closest_pair_fraction(a) >= min_bond_fraction]
    if not physical:
        raise ValueError(
            f"all {len(frames)} flagged frames have collapsed atoms (closer than {min_bond_fraction} x "
            "covalent radii): explore at milder conditions, or lower --min-bond-fraction"
        )
    candidates, carved = physical, None
    if carve is not None:  # copies of a frame carve to copies of its regions, dropped next
        candidates = carve_frames(physical, carve)
        carved = CarveCounts(frames=len(physical), frame_atoms=sum(len(a) for a in physical), regions=len(candidates))
        if sum(len(a) for a in candidates) > carved.frame_atoms:
            warnings.append("the carved structures hold more atoms than the frames whole: for cells this small, "
                            "collect without --carve")
    unique = drop_exact_duplicates(candidates)
    distinct = diverse_order(unique, backbone, min_distance, progress)
    selected = distinct if max_frames is None else distinct[:max_frames]
    chosen = []
    for order, index in enumerate(selected):
        atoms = unique[index].copy()
        atoms.info[INFO_COLLECT_ORDER] = order
        chosen.append(atoms)
    return CollectResult(
        frames=chosen,
        read=read,
        non_finite=read - len(frames),
        unphysical=len(frames) - len(physical),
        exact_duplicates=len(candidates) - len(unique),
        near_duplicates=len(unique) - len(distinct),
        not_selected=len(distinct) - len(selected),
        frames_per_run=per_run,
        warnings=warnings,
        carved=carved,
    )


def read_runs(runs: Sequence[str | os.PathLike]) -> tuple[list[ase.Atoms], int, dict[str, int], list[str]]:
    """(finite frames of all runs, frames read, frames read per run, warnings); an error when
    no run holds a finite frame."""
    frames: list[ase.Atoms] = []
    per_run: dict[str, int] = {}
    warnings: list[str] = []
    for run in runs:
        run_frames, warning = read_flagged_frames(run)
        per_run[str(run)] = len(run_frames)
        if warning:
            warnings.append(warning)
        frames.extend(_finite_frames(run, run_frames, warnings))
    read = sum(per_run.values())
    if not frames:
        what = "finite flagged frames" if read else "flagged frames"
        raise ValueError(f"no {what} in {', '.join(map(str, runs))}: nothing to collect")
    return frames, read, per_run, warnings


def drop_exact_duplicates(frames: Sequence[ase.Atoms]) -> list[ase.Atoms]:
    """The first of every set of identical frames (same `structure_key`), in order."""
    unique: dict[str, ase.Atoms] = {}
    for atoms in frames:
        unique.setdefault(structure_key(atoms), atoms)
    return list(unique.values())


def diverse_order(
    frames: Sequence[ase.Atoms], backbone: Backbone, min_distance: float, progress: bool = True
) -> list[int]:
    """Indices of `frames` in farthest-point order in the backbone's feature space, starting
    from the least reliable frame, without near-duplicates (closer than `min_distance`)."""
    predictions = predict_dataset(backbone, frames, description="collect features", progress=progress)
    descriptors = pooled_descriptors([described_atoms(p, a) for p, a in zip(predictions, frames)])
    # The logit still orders frames whose probability underflowed to 0.
    unreliability = np.array(
        [float(a.info.get(INFO_LOGIT, a.info.get(INFO_RELIABILITY, np.inf))) for a in frames]
    )
    start = int(np.argmin(unreliability)) if np.isfinite(unreliability).any() else 0
    # Without a cap, FPS runs until only near-duplicates are left: that is the de-duplication.
    distinct, _ = farthest_point_sampling(descriptors, None, min_distance, start)
    return distinct


def write_extxyz_atomic(path: str | os.PathLike, structures: Sequence[ase.Atoms]) -> Path:
    """Write an extxyz file via temp file + fsync + rename: never half a file on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    ase.io.write(buffer, list(structures), format="extxyz")
    atomic_write_text(path, buffer.getvalue())
    return path

