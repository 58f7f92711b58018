"""Which MACE models run layer by layer, and the refusal of the others."""

from __future__ import annotations

import pytest
import torch

from probe_md.backbone.mace import MaceBackbone, save_mace_model
from probe_md.backbone.mace_factory import build_mace_model
from probe_md.lammps.export import export_fused_model, read_fused_metadata
from probe_md.head import HeadConfig, ProbeHead
from probe_md.mace_stages import StagedMace, UnstageableModelError, why_not_stageable
from probe_md.training import HeadInfo, save_head


def test_default_architecture_is_stageable(tiny_mace_path):
    model = MaceBackbone.from_file(tiny_mace_path).model
    assert why_not_stageable(model) is None
    # 8x0e embedding sent into layer 0, 8x0e+8x1o features sent into layer 1
    assert StagedMace(model).exchange_widths == [8, 32]


def test_unknown_block_is_refused_and_exports_whole_graph_only(tmp_path):
    model = build_mace_model(interaction="RealAgnosticDensityInteractionBlock", seed=1)
    assert "RealAgnosticDensityInteractionBlock" in why_not_stageable(model)
    with pytest.raises(UnstageableModelError, match="cannot run layer by layer: interaction block"):
        StagedMace(model)
    mace_path, head_path = tmp_path / "mace.pt", tmp_path / "head.pt"
    metadata = save_mace_model(model, mace_path)
    save_head(ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns))).eval(),
              HeadInfo(criterion="force_rmse", threshold=0.5, backbone_fingerprint="t"), head_path)
    export_fused_model(mace_path, head_path, tmp_path / "fused.pt")
    written = read_fused_metadata(tmp_path / "fused.pt")
    assert not written["staged"] and "RealAgnosticDensityInteractionBlock" in written["not_staged_because"]
    assert not torch.jit.load(str(tmp_path / "fused.pt"))._c._has_method("stage_layer")
