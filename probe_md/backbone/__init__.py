"""Backbones: frozen MLIPs that give energy, forces and per-atom invariant features."""

from probe_md.backbone.base import Backbone, StructurePrediction

__all__ = ["Backbone", "StructurePrediction", "load_backbone"]


def load_backbone(path, **kwargs) -> Backbone:
    """Load a backbone from a model file: a CHGNet checkpoint, else MACE."""
    from probe_md.backbone.chgnet import CHGNetBackbone, is_chgnet_file

    if is_chgnet_file(path):
        return CHGNetBackbone.from_file(path, **kwargs)
    from probe_md.backbone.mace import MaceBackbone

    return MaceBackbone.from_file(path, **kwargs)
