"""Build small, randomly initialised MACE models (tests, plugin checks, examples)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import mace  # noqa: F401  (before e3nn, see probe_md.backbone.mace)
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from e3nn import o3
from mace import modules


def build_mace_model(
    species: Sequence[str] = ("Cu",),
    r_max: float = 4.0,
    num_channels: int = 8,
    max_L: int = 1,
    num_layers: int = 2,
    correlation: int = 2,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    avg_num_neighbors: float = 12.0,
    interaction: str = "RealAgnosticResidualInteractionBlock",
    interaction_first: str | None = None,
) -> torch.nn.Module:
    """A ScaleShiftMACE with random weights, as mace_run_train would build it."""
    numbers = sorted(ATOMIC_NUMBERS[s] for s in species)
    irreps = " + ".join(f"{num_channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        interaction_cls = modules.interaction_classes[interaction]
        interaction_cls_first = modules.interaction_classes[interaction_first or interaction]
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=interaction_cls,
            interaction_cls_first=interaction_cls_first,
            num_interactions=num_layers,
            num_elements=len(numbers),
            hidden_irreps=o3.Irreps(irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=np.array([-3.0 - 0.1 * i for i in range(len(numbers))]),
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=numbers,
            correlation=correlation,
            radial_type="bessel",
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(previous)
    return model.eval()
