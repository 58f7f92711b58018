"""Run a MACE backbone in another floating-point precision (float32 deployment of a float64 model).

A TorchScript MACE casts like a python one: `.to(torch.float32)` converts every floating-point
parameter and buffer, and the compiled code builds its tensors from its inputs' dtype. The cast
TorchScript model agrees with the rebuilt python model cast the same way (energy identical,
forces within 3e-7 eV/Å on a 108-atom Cu cell), so no rebuild from the config sidecar is needed.
Outputs are float32 except `node_energy`, which mace's ScaleShiftMACE always sums in float64.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Final

import torch

from probe_md.backbone.mace import MaceBackbone

DTYPES: Final[dict[str, torch.dtype]] = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(dtype: str) -> torch.dtype:
    """`torch.float32` / `torch.float64` from "float32" / "float64"; anything else is a one-line error."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cast_mace_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of a MACE model (python or TorchScript) with its floating-point weights in `dtype`;
    `model` itself is left as it was (`Module.to` casts in place)."""
    return copy.deepcopy(model).to(dtype)


def cast_backbone(backbone: MaceBackbone, dtype: str) -> MaceBackbone:
    """The backbone run in `dtype` ("float32" or "float64"); `backbone` itself when it already is.

    Casting up (float32 -> float64) is allowed: the weights stay the float32 values, but the
    arithmetic becomes float64. The fingerprint changes with the dtype, so feature caches of
    the two precisions never mix.
    """
    torch_dtype = parse_dtype(dtype)
    if backbone.metadata.dtype == dtype:
        return backbone
    fingerprint = hashlib.sha256(f"{backbone.fingerprint}:{dtype}".encode()).hexdigest()
    return MaceBackbone(
        cast_mace_model(backbone.model, torch_dtype),
        replace(backbone.metadata, dtype=dtype),
        fingerprint,
        batch_size=backbone.batch_size,
        device=str(backbone.device),
        source=backbone.source,
    )
