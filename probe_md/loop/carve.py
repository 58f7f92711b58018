"""Cut small labelable structures out of big flagged frames, guided by per-atom importance.

A flagged frame of 10^4-10^6 atoms is flagged because of a few hundred atoms; no reference
method labels it whole. For each frame the atoms that matter (`importance`, written by the
monitor) are picked as *core* atoms (top-k, or above a level), grouped into connected
regions (core atoms closer than `link` join one region), and each region is cut out with
every atom (periodic images included) within `buffer` of a core atom. Core atoms keep their
whole environment up to `buffer` exactly as in the frame, across periodic boundaries and in
triclinic cells: with buffer >= layers x r_max the MLIP's features of core atoms are those
of the frame, and with buffer >= 2 x the reference cutoff so are the reference forces on
them (benchmarks/carving). Only core forces are trusted (`arrays['probe_core']`).

The piece goes into an orthorhombic box of its own (periodic by default, or a cluster in
vacuum): each side is long enough that no periodic image comes within `buffer` of a core
atom and at least `gap` of vacuum separates the piece from its images.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Final, Sequence

import ase
import numpy as np

from probe_md.lammps.monitor import ARRAY_IMPORTANCE, INFO_STEP

# what a carved structure carries (besides the frame's info: run, step, reliability, logit)
ARRAY_CORE: Final[str] = "probe_core"  # [n_atoms] bool, True = core atom: only its reference forces are trusted
ARRAY_FRAME_INDEX: Final[str] = "frame_index"  # [n_atoms] int, the atom's index in the flagged frame
INFO_CARVE_REGION: Final[str] = "carve_region"  # int, region number within its frame (0 = most important)
INFO_CARVE_CENTRE: Final[str] = "carve_centre"  # [3] float, Å, frame position of the region's most important atom
INFO_CARVE_IMPORTANCE: Final[str] = "carve_importance"  # float, summed importance of the core atoms
INFO_CARVE_FRAME_ATOMS: Final[str] = "carve_frame_atoms"  # int, atoms in the frame it was cut from
INFO_CARVE_BUFFER: Final[str] = "carve_buffer"  # float, Å, buffer around core atoms

DEFAULT_TOP_K: Final[int] = 8  # core atoms per frame: the most important ones ...
DEFAULT_MIN_IMPORTANCE: Final[float] = 2.0  # ... that matter twice as much as the average atom
DEFAULT_MAX_ATOMS: Final[int] = 1000  # largest carved structure; a reference method must label it


@dataclass(frozen=True)
class CarveConfig:
    """How to pick core atoms and cut their regions; None lengths come from the MLIP
    (buffer: layers x r_max, link and gap: r_max), see `with_receptive_field`."""

    top_k: int | None = DEFAULT_TOP_K  # at most this many picked atoms per frame (None: no limit)
    min_importance: float | None = DEFAULT_MIN_IMPORTANCE  # picked atoms need at least this importance (1 = average atom)
    core_radius: float = 0.0  # Å: every atom this close to a picked atom is a core atom too
    buffer: float | None = None  # Å around every core atom, kept as in the frame
    link: float | None = None  # Å, core atoms closer than this belong to one region
    gap: float | None = None  # Å of vacuum between the piece and its periodic images
    max_atoms: int = DEFAULT_MAX_ATOMS
    periodic: bool = True  # False: a cluster in vacuum (pbc False)

    def __post_init__(self) -> None:
        if self.top_k is None and self.min_importance is None:
            raise ValueError("carving needs --top-k or --min-importance to pick core atoms")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if self.max_atoms < 1:
            raise ValueError(f"--max-atoms must be >= 1, got {self.max_atoms}")
        if self.core_radius < 0:
            raise ValueError(f"--core-radius must be >= 0 Å, got {self.core_radius}")
        for name in ("buffer", "link", "gap"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name} must be >= 0 Å, got {value}")

    def with_receptive_field(self, cutoff: float, num_layers: int) -> "CarveConfig":
        """Unset lengths from the MLIP: buffer = layers x r_max, link = gap = r_max."""
        return replace(
            self,
            buffer=num_layers * cutoff if self.buffer is None else self.buffer,
            link=cutoff if self.link is None else self.link,
            gap=cutoff if self.gap is None else self.gap,
        )


class CarveError(ValueError):
    """A frame cannot be carved as asked (one line naming the frame and the fix)."""


def frame_name(atoms: ase.Atoms) -> str:
    return f"frame of step {atoms.info.get(INFO_STEP, '?')} from {atoms.info.get('run', '?')}"


def check_importance(frames: Sequence[ase.Atoms]) -> None:
    """Refuse, before any work, frames without per-atom importances."""
    for atoms in frames:
        if ARRAY_IMPORTANCE not in atoms.arrays:
            raise CarveError(
                f"{frame_name(atoms)} has no per-atom importance (arrays['{ARRAY_IMPORTANCE}']): carve frames "
                "written by the probe-md monitor, or collect without --carve"
            )


def core_atoms(importance: np.ndarray, config: CarveConfig) -> np.ndarray:
    """Indices of core atoms, most important first: above min_importance, at most top_k."""
    order = np.argsort(-importance, kind="stable")
    if config.min_importance is not None:
        order = order[importance[order] >= config.min_importance]
    return order if config.top_k is None else order[: config.top_k]


def core_regions(atoms: ase.Atoms, cores: np.ndarray, link: float) -> list[np.ndarray]:
    """Core atoms grouped into regions (linked closer than `link`, periodic images included),
    each region as frame indices, most important atom first; regions in order of their first atom."""
    from ase.neighborlist import neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first, second = neighbor_list("ij", atoms[cores], link)
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(cores), len(cores)))
    _, labels = connected_components(graph, directed=False)
    regions: dict[int, list[int]] = {}
    for position, label in enumerate(labels):  # cores are most important first
        regions.setdefault(int(label), []).append(int(cores[position]))
    return [np.array(members) for members in regions.values()]


def unwrapped_core_shifts(atoms: ase.Atoms, region: np.ndarray, link: float) -> np.ndarray:
    """[n_core, 3] integer cell shifts placing the region's core atoms next to each other
    (a walk over links from the most important atom); refuses a region that wraps around
    the periodic cell, whose atoms have no single place."""
    from ase.neighborlist import neighbor_list

    first, second, shifts = neighbor_list("ijS", atoms[region], link)
    placed: dict[int, np.ndarray] = {0: np.zeros(3, dtype=int)}
    queue = deque([0])
    while queue:
        node = queue.popleft()
        for partner, shift in zip(second[first == node], shifts[first == node]):
            where = placed[node] + shift
            if partner not in placed:
                placed[int(partner)] = where
                queue.append(int(partner))
            elif np.any(placed[int(partner)] != where):
                raise CarveError(
                    f"{frame_name(atoms)}: a region of {len(region)} core atoms wraps around the periodic "
                    "cell: pick fewer core atoms (--top-k, --min-importance) or a shorter --link"
                )
    return np.array([placed[i] for i in range(len(region))])


def images_within(atoms: ase.Atoms, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, integer cell shifts) of every atom image within `radius` of `centre`.

    Displacements are wrapped to the nearest image in fractional coordinates, then every shift
    that can bring an image within `radius` (cell heights decide how many) is tried: exact in
    triclinic cells and when `radius` exceeds half the cell. O(atoms) per call.
    """
    cell = atoms.cell.complete()
    periodic = np.asarray(atoms.pbc, dtype=bool)
    fractional = (atoms.positions - centre) @ np.linalg.inv(cell)
    nearest = np.where(periodic, -np.round(fractional), 0.0)  # shift to the nearest image
    fractional = fractional + nearest
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # distances between lattice planes
    reach = np.where(periodic, np.ceil(radius / heights), 0).astype(int)
    found_atoms, found_shifts = [], []
    for extra in np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), -1).reshape(-1, 3):
        inside = np.flatnonzero(np.linalg.norm((fractional + extra) @ cell, axis=1) <= radius)
        found_atoms.append(inside)
        found_shifts.append(nearest[inside] + extra)
    return np.concatenate(found_atoms), np.concatenate(found_shifts).astype(int)


def grown_core(atoms: ase.Atoms, region: np.ndarray, core_shifts: np.ndarray, radius: float):
    """(frame indices, integer image shifts) of the region's picked atoms, first, then every
    other atom image within `radius` of one of them; each image once."""
    images: dict[tuple, None] = {(int(a), *map(int, s)): None for a, s in zip(region, core_shifts)}
    if radius > 0:
        for atom, shift in zip(region, core_shifts):
            centre = atoms.positions[atom] + shift @ atoms.cell.array
            for index, image_shift in zip(*images_within(atoms, centre, radius)):
                images.setdefault((int(index), *map(int, image_shift)), None)
    keys = np.array(list(images), dtype=int)
    return keys[:, 0], keys[:, 1:]


def region_atoms(atoms: ase.Atoms, region: np.ndarray, core_shifts: np.ndarray, buffer: float):
    """(frame indices, integer image shifts, core flags) of every atom image within `buffer`
    of a core atom, core atoms first, each image once."""
    images: dict[tuple, None] = {(int(a), *map(int, s)): None for a, s in zip(region, core_shifts)}
    for atom, shift in zip(region, core_shifts):
        centre = atoms.positions[atom] + shift @ atoms.cell.array
        for index, image_shift in zip(*images_within(atoms, centre, buffer)):
            images.setdefault((int(index), *map(int, image_shift)), None)
    keys = np.array(list(images), dtype=int)
    is_core = np.zeros(len(keys), dtype=bool)
    is_core[: len(region)] = True
    return keys[:, 0], keys[:, 1:], is_core


def box_lengths(positions: np.ndarray, is_core: np.ndarray, buffer: float, gap: float) -> np.ndarray:
    """Orthorhombic box sides: `gap` of vacuum beyond the piece, and no image atom within
    `buffer` of a core atom (matters where the frame itself has vacuum near the core)."""
    low, high = positions.min(axis=0), positions.max(axis=0)
    core_low, core_high = positions[is_core].min(axis=0), positions[is_core].max(axis=0)
    keep_images_away = buffer + np.maximum(core_high - low, high - core_low)
    return np.maximum(high - low + gap, keep_images_away) + 1e-6


def carve_region(atoms: ase.Atoms, region: np.ndarray, config: CarveConfig, number: int) -> ase.Atoms:
    """The carved structure of one region (config resolved: buffer, link and gap set)."""
    core, core_shifts = grown_core(atoms, region, unwrapped_core_shifts(atoms, region, config.link),
                                   config.core_radius)
    indices, shifts, is_core = region_atoms(atoms, core, core_shifts, config.buffer)
    if len(indices) > config.max_atoms:
        raise CarveError(
            f"{frame_name(atoms)}: region {number} ({len(core)} core atoms) carves to {len(indices)} atoms, "
            f"more than --max-atoms {config.max_atoms}: raise --max-atoms or pick fewer core atoms "
            "(--top-k, --core-radius)"
        )
    positions = atoms.positions[indices] + shifts @ atoms.cell.array
    lengths = box_lengths(positions, is_core, config.buffer, config.gap)
    low = positions.min(axis=0)
    positions = positions - low + 0.5 * (lengths - (positions.max(axis=0) - low))  # centred in the box
    piece = ase.Atoms(numbers=atoms.numbers[indices], positions=positions, cell=np.diag(lengths),
                      pbc=config.periodic)
    piece.arrays[ARRAY_CORE] = is_core
    piece.arrays[ARRAY_FRAME_INDEX] = indices
    importance = np.asarray(atoms.arrays[ARRAY_IMPORTANCE], dtype=float)
    piece.arrays[ARRAY_IMPORTANCE] = importance[indices]
    piece.info.update({k: v for k, v in atoms.info.items() if np.isscalar(v)})
    piece.info.update({
        INFO_CARVE_REGION: number,
        INFO_CARVE_CENTRE: atoms.positions[region[0]].copy(),
        INFO_CARVE_IMPORTANCE: float(importance[region].sum()),
        INFO_CARVE_FRAME_ATOMS: len(atoms),
        INFO_CARVE_BUFFER: float(config.buffer),
    })
    return piece


def carve_frame(atoms: ase.Atoms, config: CarveConfig) -> list[ase.Atoms]:
    """One carved structure per region of the frame's core atoms (config resolved)."""
    if config.buffer is None or config.link is None or config.gap is None:
        raise ValueError("CarveConfig lengths unset: call with_receptive_field(cutoff, num_layers) first")
    check_importance([atoms])
    cores = core_atoms(np.asarray(atoms.arrays[ARRAY_IMPORTANCE], dtype=float), config)
    if len(cores) == 0:
        return []
    regions = core_regions(atoms, cores, config.link)
    return [carve_region(atoms, region, config, number) for number, region in enumerate(regions)]


def carve_frames(frames: Sequence[ase.Atoms], config: CarveConfig) -> list[ase.Atoms]:
    """Every region of every frame, frame by frame."""
    check_importance(frames)
    return [piece for atoms in frames for piece in carve_frame(atoms, config)]
