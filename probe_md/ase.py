"""ASE calculator: MACE energy/forces/stress plus PROBE's reliability and per-atom importance."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from probe_md.backbone.mace import MaceBackbone
from probe_md.backbone.mace_precision import cast_backbone
from probe_md.head import atom_importance
from probe_md.structures import check_structures
from probe_md.training import load_head


class ProbeCalculator(Calculator):
    """MACE + PROBE. Extra results: `reliability` (calibrated probability that the MLIP is
    reliable), `reliability_logit`, `predicted_error` (the head's estimate of the structure's
    error in its criterion's units, e.g. force RMSE in eV/Å) with `predicted_error_interval`
    (lower, upper of an 80 % interval; NaN for heads trained without errors; upper = inf past
    the largest error the head was trained on, see ProbeHead.readout_error), per-atom
    `importance` (1 = average atom) and per-atom `attention` [n_atoms, heads]. `dtype` ("float32" or "float64", default: the model's own)
    runs the MACE model and the head in that precision."""

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "reliability",
        "reliability_logit",
        "predicted_error",
        "predicted_error_interval",
        "importance",
        "attention",
    ]

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        head: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        from probe_md import defaults

        self.backbone = MaceBackbone.from_file(model or defaults.default_model_path(), device=device)
        if dtype is not None:
            self.backbone = cast_backbone(self.backbone, dtype)
        self.head, self.head_info = load_head(head or defaults.default_head_path())
        if self.head.config.backbone_feature_dim != self.backbone.feature_dim:
            raise ValueError(
                f"head expects {self.head.config.backbone_feature_dim} features, the MACE model gives "
                f"{self.backbone.feature_dim}: they were not trained together"
            )
        self.head = self.head.to(device=device, dtype=self.backbone.dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        check_structures([self.atoms], source="ProbeCalculator")
        self.backbone.check_species([self.atoms])
        want_stress = "stress" in properties and all(self.atoms.pbc)
        out = self.backbone.forward_batch([self.atoms], compute_stress=want_stress)
        with torch.no_grad():
            inputs = self.head.inputs(out["features"], out["forces"].detach())
            head_out = self.head(inputs, out["batch"], 1)
            lower, median, upper = self.head.readout_error(head_out.pooled, head_out.atom_counts)[0].double().tolist()
        self.results = {
            "energy": float(out["energy"][0]),
            "free_energy": float(out["energy"][0]),
            "energies": out["node_energy"].cpu().numpy().astype(np.float64),
            "forces": out["forces"].cpu().numpy().astype(np.float64),
            "reliability": float(torch.sigmoid(head_out.logits[0])),
            "reliability_logit": float(head_out.logits[0]),
            "predicted_error": median,
            "predicted_error_interval": np.array([lower, upper]),
            "importance": atom_importance(head_out.attention).cpu().numpy().astype(np.float64),
            "attention": head_out.attention.cpu().numpy().astype(np.float64),
        }
        if want_stress:
            stress = out["stress"][0].cpu().numpy().astype(np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
