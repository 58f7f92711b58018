"""The staged fused model with halo exchange (probe_md.lammps.halo_exchange, the executable
specification of `pair_style probe/mace ... exchange yes`) equals the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial import cKDTree

from probe_md.backbone.mace import save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.lammps.export import export_fused_model
from probe_md.head import HeadConfig, ProbeHead
from probe_md.lammps.halo_exchange import atom_forces, edge_vectors, periodic_exchanges, staged_step
from probe_md.training import HeadInfo, save_head
from ghosts import periodic_images

R_MAX = 3.2


def fused_file(folder, dtype=torch.float64, interaction_first=None):
    mace_path, head_path, fused_path = folder / "mace.pt", folder / "head.pt", folder / "fused.pt"
    metadata = save_mace_model(
        build_mace_model(dtype=dtype, seed=2, r_max=R_MAX, interaction_first=interaction_first), mace_path
    )
    torch.manual_seed(3)
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns) + 1, num_heads=2, value_dim=3,
                                reads_force_norm=True))
    save_head(head.eval(), HeadInfo(criterion="force_rmse", threshold=0.5, backbone_fingerprint="t"), head_path)
    return export_fused_model(mace_path, head_path, fused_path), torch.jit.load(str(fused_path))


def whole_graph(atoms, num_layers):
    """Local atoms + every image within num_layers * r_max; edges both ways within r_max."""
    positions, owner = periodic_images(atoms, num_layers * R_MAX)
    pairs = np.array(sorted(cKDTree(positions).query_pairs(R_MAX)), dtype=np.int64).reshape(-1, 2)
    return positions, owner, np.concatenate([pairs, pairs[:, ::-1]]).T


def local_graph(atoms):
    """Local atoms + images within r_max; edges only into local atoms (what a rank computes)."""
    positions, owner = periodic_images(atoms, R_MAX)
    tree = cKDTree(positions)
    senders, receivers = [], []
    for i in range(len(atoms)):
        for j in tree.query_ball_point(positions[i], R_MAX):
            if j != i:
                senders.append(j)
                receivers.append(i)
    return positions, owner, np.array([senders, receivers], dtype=np.int64)


def cell(kind):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2) if kind == "cubic" else bulk("Cu", "fcc", a=3.61).repeat((2, 2, 3))
    atoms.rattle(0.1, seed=4)
    return atoms


def folded(forces, owner, n_local):
    out = np.zeros((n_local, 3))
    np.add.at(out, owner, forces)
    return out


@pytest.mark.parametrize("interaction_first", [None, "RealAgnosticInteractionBlock"], ids=["residual", "plain-first"])
@pytest.mark.parametrize("kind", ["cubic", "triclinic"])
def test_staged_step_equals_whole_graph(tmp_path, kind, interaction_first):
    metadata, fused = fused_file(tmp_path, interaction_first=interaction_first)
    assert metadata["staged"], metadata["not_staged_because"]
    atoms = cell(kind)
    n = len(atoms)
    positions, owner, edges = whole_graph(atoms, metadata["num_layers"])
    energy, forces, node_feats = fused.forward_with_features(
        torch.tensor(positions), torch.zeros(len(positions), dtype=torch.long), torch.tensor(edges), n
    )
    scores, values = fused.head_terms(node_feats, torch.tensor(folded(forces.numpy(), owner, n)))

    local_positions, local_owner, local_edges = local_graph(atoms)
    assert len(local_positions) < len(positions)
    edge_index = torch.tensor(local_edges)
    forward, reverse = periodic_exchanges(torch.tensor(local_owner), n)
    step = staged_step(
        fused, edge_vectors(torch.tensor(local_positions), edge_index),
        torch.zeros(len(local_positions), dtype=torch.long), edge_index, n, forward, reverse,
    )
    staged_forces = atom_forces(step.edge_gradient, edge_index, len(local_positions)).numpy()
    staged_scores, staged_values = fused.head_terms(step.node_feats, reverse(torch.tensor(staged_forces))[:n])

    np.testing.assert_allclose(step.node_energy, energy, rtol=0, atol=1e-12, err_msg="node energies")
    np.testing.assert_allclose(folded(staged_forces, local_owner, n), folded(forces.numpy(), owner, n),
                               rtol=0, atol=1e-12, err_msg="forces")
    np.testing.assert_allclose(staged_scores, scores, rtol=0, atol=1e-12, err_msg="head scores")
    np.testing.assert_allclose(staged_values, values, rtol=0, atol=1e-12, err_msg="head values")


def test_staged_float32_export_of_a_float64_model(tmp_path):
    """`export --dtype float32`: the staged float32 model agrees with float64 to float32 precision."""
    metadata, fused64 = fused_file(tmp_path)
    fused32_path = tmp_path / "fused32.pt"
    metadata32 = export_fused_model(tmp_path / "mace.pt", tmp_path / "head.pt", fused32_path, dtype="float32")
    assert metadata32["dtype"] == "float32" and metadata32["staged"]
    fused32 = torch.jit.load(str(fused32_path))
    atoms = cell("cubic")
    n = len(atoms)
    positions, owner, edges = local_graph(atoms)
    edge_index = torch.tensor(edges)
    vectors = edge_vectors(torch.tensor(positions), edge_index)
    species = torch.zeros(len(positions), dtype=torch.long)
    steps = [staged_step(f, vectors, species, edge_index, n, *periodic_exchanges(torch.tensor(owner), n))
             for f in (fused64, fused32)]
    # measured: 3e-7 eV per atom, 3e-7 eV/A on forces (tiny random model)
    np.testing.assert_allclose(steps[1].node_energy, steps[0].node_energy, rtol=0, atol=1e-5)
    np.testing.assert_allclose(steps[1].edge_gradient, steps[0].edge_gradient, rtol=0, atol=1e-5)


def test_rank_without_atoms_is_harmless(tmp_path):
    """A rank that owns atoms but no edges (isolated atoms) still returns zeros, not errors."""
    _, fused = fused_file(tmp_path)
    edge_index = torch.zeros((2, 0), dtype=torch.long)
    identity = lambda rows: rows  # noqa: E731
    step = staged_step(fused, torch.zeros((0, 3)), torch.zeros(2, dtype=torch.long), edge_index, 2, identity, identity)
    assert step.node_energy.shape == (2,) and step.edge_gradient.shape == (0, 3)
