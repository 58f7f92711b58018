"""Fused TorchScript export: save -> torch.jit.load -> same energies, forces, head terms, logit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial import cKDTree

from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.lammps.export import FUSED_FORMAT, FUSED_METADATA_FILE, export_fused_model, read_fused_metadata
from probe_md.head import HeadConfig, ProbeHead, atom_importance
from probe_md.training import HeadInfo, save_head
from ghosts import periodic_images


def write_inputs(folder, dtype=torch.float64, seed=0):
    """A tiny random MACE and a random, non-trivially scaled PROBE head, saved to `folder`."""
    mace_path, head_path = folder / f"mace_{seed}.pt", folder / f"head_{seed}.pt"
    metadata = save_mace_model(build_mace_model(dtype=dtype, seed=seed), mace_path)
    torch.manual_seed(seed + 1)
    # the head also reads the MLIP's force norm: the fused model must get the complete forces
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns) + 1, num_heads=3, value_dim=5,
                                reads_force_norm=True))
    head.set_feature_scaling(torch.randn(head.config.feature_dim) * 0.1, torch.rand(head.config.feature_dim) + 0.5)
    head.temperature.fill_(1.7)
    head.error_fitted.fill_(1.0)
    head.error_interval_offset.fill_(0.3)
    # the logit of heads trained with errors: the predicted error's margin (reads the atom count)
    head.logit_from_error.fill_(1.0)
    head.log_threshold.fill_(-0.5)
    save_head(head.eval(), HeadInfo(criterion="force_rmse", threshold=0.6, backbone_fingerprint="test"), head_path)
    return mace_path, head_path


def ghost_graph(atoms, r_max, num_layers):
    """LAMMPS-style graph of a periodic cell: local atoms first, then every periodic image
    within num_layers * r_max of a local atom; edges (sender, receiver) within r_max, no shifts.
    Returns positions [N_all,3], owner [N_all] (index of the local atom each one images), edges."""
    positions, owner = periodic_images(atoms, num_layers * r_max)
    pairs = np.array(sorted(cKDTree(positions).query_pairs(r_max)), dtype=np.int64).reshape(-1, 2)
    edges = np.concatenate([pairs, pairs[:, ::-1]]).T  # both directions
    return positions, owner, edges


def rattled_cu(kind: str, seed: int):
    if kind == "cubic":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    else:  # triclinic primitive cell
        atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 3))
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    mace_path, head_path = write_inputs(folder, dtype=request.param)
    fused_path = folder / "fused.pt"
    metadata = export_fused_model(mace_path, head_path, fused_path)
    return mace_path, head_path, fused_path, metadata, request.param


@pytest.mark.parametrize("kind", ["cubic", "triclinic"])
def test_fused_matches_backbone_and_head(exported, kind):
    from probe_md.training import load_head

    mace_path, head_path, fused_path, metadata, dtype = exported
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    backbone = MaceBackbone.from_file(mace_path)
    head, _ = load_head(head_path)
    fused = torch.jit.load(str(fused_path))
    atoms = rattled_cu(kind, seed=3)
    reference = backbone.predict([atoms])[0]

    positions, owner, edges = ghost_graph(atoms, metadata["r_max"], metadata["num_layers"])
    n_local = len(atoms)
    args = (torch.tensor(positions), torch.zeros(len(positions), dtype=torch.long), torch.tensor(edges), n_local)
    node_energy, forces, node_feats = fused.forward_with_features(*args)
    plain_energy, plain_forces = fused(*args)

    # Ghost forces belong to the atoms they image (what LAMMPS's reverse communication does).
    folded = np.zeros((n_local, 3))
    np.add.at(folded, owner, forces.numpy())
    np.testing.assert_allclose(node_energy.sum().item(), reference.energy, rtol=0, atol=tol * n_local,
                               err_msg=f"{kind}: fused energy differs from MaceBackbone")
    np.testing.assert_allclose(folded, reference.forces, rtol=0, atol=tol, err_msg=f"{kind}: forces")
    # Same computation; float32 scatter sums may round differently from call to call.
    np.testing.assert_allclose(plain_energy.numpy(), node_energy.numpy(), rtol=0, atol=tol, err_msg="forward")
    np.testing.assert_allclose(plain_forces.numpy(), forces.numpy(), rtol=0, atol=tol, err_msg="forward")
    assert node_feats.shape[0] == n_local and node_feats.dtype == torch.float64
    scores, values = fused.head_terms(node_feats, torch.tensor(folded))

    with torch.no_grad():
        features = head.inputs(torch.tensor(reference.features, dtype=head.feature_mean.dtype),
                               torch.tensor(reference.forces, dtype=head.feature_mean.dtype))
        ref_scores, ref_values = head.atom_terms(features)
        ref_out = head(features, torch.zeros(n_local, dtype=torch.long), 1)
    head_tol = 1e-5 if dtype == torch.float64 else 1e-3  # the head itself is float32
    np.testing.assert_allclose(scores.numpy(), ref_scores.numpy(), atol=head_tol, err_msg="attention logits")
    np.testing.assert_allclose(values.numpy(), ref_values.numpy(), atol=head_tol, err_msg="values")

    # The engine's pooling: max, then sums (see pair_probe_mace.cpp), then `readout`.
    max_score = scores.max(dim=0).values
    weights = torch.exp(scores - max_score)
    pooled = (weights.unsqueeze(-1) * values).sum(0) / weights.sum(0).unsqueeze(-1)
    logit = fused.readout(pooled.reshape(1, -1), torch.tensor([float(n_local)]))
    assert logit.dtype == torch.float64 and logit.shape == (1,)
    np.testing.assert_allclose(logit.item(), ref_out.logits.item(), atol=head_tol, err_msg="calibrated logit")
    predicted_error = fused.readout_error(pooled.reshape(1, -1), torch.tensor([float(n_local)]))
    assert predicted_error.dtype == torch.float64 and predicted_error.shape == (1, 3)
    np.testing.assert_allclose(predicted_error.numpy(), head.readout_error(ref_out.pooled, ref_out.atom_counts).detach().numpy(), rtol=head_tol,
                               err_msg="predicted error (lower, median, upper)")
    importance = (weights / weights.sum(0)).mean(1) * n_local
    np.testing.assert_allclose(importance.numpy(), atom_importance(ref_out.attention).numpy(), atol=head_tol)


def test_fused_file_describes_itself(exported):
    mace_path, head_path, fused_path, metadata, dtype = exported
    stored = read_fused_metadata(fused_path)
    assert stored == metadata
    assert stored["format"] == FUSED_FORMAT
    assert stored["species"] == ["Cu"] and stored["atomic_numbers"] == [29]
    assert stored["dtype"] == str(dtype).replace("torch.", "")
    assert stored["threshold"] == 0.6 and stored["criterion"] == "force_rmse"
    assert stored["temperature"] == pytest.approx(1.7)
    assert stored["num_heads"] == 3 and stored["value_dim"] == 5
    assert set(stored["versions"]) == {"torch", "mace-torch", "probe-md"}
    assert len(stored["sha256"]["mace"]) == 64 and len(stored["sha256"]["head"]) == 64
    fused = torch.jit.load(str(fused_path))
    assert fused.probe_md_format == FUSED_FORMAT and fused.num_layers == stored["num_layers"]
    assert not list(fused_path.parent.glob("*.tmp")), "atomic save left a temp file behind"


def test_missing_inputs(tmp_path):
    mace_path, head_path = write_inputs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_fused_model(tmp_path / "nope.pt", head_path, tmp_path / "out.pt")
    with pytest.raises(FileNotFoundError, match="head file .* does not exist"):
        export_fused_model(mace_path, tmp_path / "nope.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_corrupt_inputs(tmp_path):
    mace_path, head_path = write_inputs(tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="neither TorchScript nor a torch file"):
        export_fused_model(garbage, head_path, tmp_path / "out.pt")
    with pytest.raises(ValueError, match="head file .* corrupt"):
        export_fused_model(mace_path, garbage, tmp_path / "out.pt")
    with pytest.raises(ValueError, match="corrupt"):
        read_fused_metadata(garbage)
    with pytest.raises(ValueError, match="not a probe-md fused model"):
        read_fused_metadata(mace_path)


def test_head_feature_dim_mismatch(tmp_path):
    mace_path, _ = write_inputs(tmp_path)
    wrong = ProbeHead(HeadConfig(feature_dim=7))
    save_head(wrong, HeadInfo(criterion="force_rmse", threshold=0.5, backbone_fingerprint="x"), tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="expects 7 features per atom, but MACE model .* gives 16"):
        export_fused_model(mace_path, tmp_path / "wrong.pt", tmp_path / "out.pt")


def test_cli_export(tmp_path, capsys):
    from probe_md.cli.main import main

    mace_path, head_path = write_inputs(tmp_path)
    out = tmp_path / "cli_fused.pt"
    assert main(["export", "--model", str(mace_path), "--head", str(head_path), "-o", str(out)]) == 0
    assert "pair_style probe/mace" in capsys.readouterr().out
    assert read_fused_metadata(out)["format"] == FUSED_FORMAT
    assert main(["export", "--model", str(tmp_path / "missing.pt"), "--head", str(head_path), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_output_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    from probe_md.lammps import export
    from probe_md.cli.main import main

    def must_not_load(*_):
        raise AssertionError("inputs loaded before the output path was checked")

    monkeypatch.setattr(export, "_load_inputs", must_not_load)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "x.pt"  # under a regular file: unwritable even for root
    with pytest.raises(ValueError, match=r"cannot write fused model file .*afile is a file, not a folder"):
        export_fused_model(tmp_path / "m.pt", tmp_path / "h.pt", out)
    assert main(["export", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err


def test_a_fused_file_of_an_older_format_says_re_export(tmp_path):
    mace_path, head_path = write_inputs(tmp_path)
    metadata = export_fused_model(mace_path, head_path, tmp_path / "fused.pt")
    old = tmp_path / "old.pt"  # format 1: `readout` took no atom counts
    torch.jit.save(torch.jit.load(str(tmp_path / "fused.pt")), str(old),
                   _extra_files={FUSED_METADATA_FILE: json.dumps({**metadata, "format": "probe_md.fused/1"})})
    with pytest.raises(ValueError, match="format 'probe_md.fused/1'.*re-export it"):
        read_fused_metadata(old)
