"""Reference potentials that label data in place of DFT, reusable by name."""

from __future__ import annotations

from typing import Callable

from probe_md.reference.cu_snap import CU_SNAP_NAME, cu_snap_calculator

# name -> factory returning a fresh ASE calculator (e.g. `probe-md label --calculator cu-snap`)
REFERENCE_CALCULATORS: dict[str, Callable] = {CU_SNAP_NAME: cu_snap_calculator}


def reference_calculator(name: str):
    """A fresh ASE calculator for the reference potential called `name`."""
    if name not in REFERENCE_CALCULATORS:
        known = ", ".join(sorted(REFERENCE_CALCULATORS))
        raise KeyError(f"unknown reference calculator {name!r}; known: {known}")
    return REFERENCE_CALCULATORS[name]()


__all__ = ["CU_SNAP_NAME", "REFERENCE_CALCULATORS", "cu_snap_calculator", "reference_calculator"]
