"""The bare reference of the scaling benchmark: the same TorchScript MACE, energy + forces on
the periodic graph of the same fcc Cu cell, outside LAMMPS, on 1 thread (or the GPU), in its own process.

  python bare_mace.py --mace cu_mace.pt --repeat 6 --dtype float64 --out bare.json

float64 is the backbone file itself (`MaceBackbone.from_file(...).model`); float32 is the
`mace` submodule of the float32 fused file (`--fused`), i.e. exactly what LAMMPS runs. The
graph is built as `MaceBackbone` builds it for `predict` (mace's AtomicData, periodic shifts);
only the model call is timed: `--warmup` + 1 untimed calls first (as many model calls as a
LAMMPS case makes before its timed run: setup + warmup steps), then up to `--calls` within
`--time-budget` seconds (at least 2); the median call counts. run.py starts it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from lammps_case import MIN_TIMED_STEPS, timed_steps  # also puts benchmarks/ on sys.path
from fcc_cu import CU_FCC_A  # noqa: E402


def fcc_cu(repeat: int):
    """The cell LAMMPS builds with `lattice fcc` + `create_atoms` (atom order aside)."""
    from ase.build import bulk

    return bulk("Cu", "fcc", a=CU_FCC_A, cubic=True).repeat(repeat)


def load_model(mace_path: Path, fused_path: Path | None, dtype: str):
    """(TorchScript MACE in `dtype`, the backbone's metadata)."""
    import torch

    from probe_md.backbone.mace import MaceBackbone

    backbone = MaceBackbone.from_file(mace_path)
    model = backbone.model
    if dtype != backbone.metadata.dtype:
        if fused_path is None:
            raise ValueError(f"{mace_path} is {backbone.metadata.dtype}: pass the {dtype} fused file with --fused")
        model = torch.jit.load(str(fused_path), map_location="cpu").mace.eval()
    found = str(next(model.parameters()).dtype).replace("torch.", "")
    if found != dtype:
        raise ValueError(f"the MACE model loaded for {dtype} has {found} parameters")
    return model, backbone.metadata


def periodic_graph(atoms, metadata, dtype: str) -> dict:
    """mace's input dict for one structure, as MaceBackbone._graphs + Batch build it."""
    import torch
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        config = mace_data.config_from_atoms(atoms, key_specification=keyspec)
        graph = mace_data.AtomicData.from_config(
            config, z_table=AtomicNumberTable(metadata.atomic_numbers), cutoff=metadata.r_max, heads=metadata.heads
        )
    finally:
        torch.set_default_dtype(previous_dtype)
    return torch_geometric.Batch.from_data_list([graph]).to_dict()


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so a call's time is its whole time."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed_call(model, data: dict, device: str = "cpu") -> tuple[float, float]:
    """(seconds, energy in eV) of one energy + forces call."""
    synchronize(device)
    start = time.perf_counter()
    output = model(data, training=False, compute_force=True)
    synchronize(device)
    seconds = time.perf_counter() - start
    assert output["forces"] is not None
    return seconds, float(output["energy"].detach().sum())


def reuse_freed_memory() -> None:
    """The allocator policy pair_style probe/mace sets in LAMMPS (glibc: no mmap for large
    blocks, no trimming), so both sides reuse their step's memory instead of faulting it in anew."""
    import ctypes

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def run_bare(args: argparse.Namespace) -> dict:
    import torch

    reuse_freed_memory()
    torch.set_num_threads(1)
    atoms = fcc_cu(args.repeat)
    model, metadata = load_model(args.mace, args.fused, args.dtype)
    model = model.to(args.device)
    data = {key: value.to(args.device) if isinstance(value, torch.Tensor) else value
            for key, value in periodic_graph(atoms, metadata, args.dtype).items()}
    for _ in range(args.warmup + 1):  # TorchScript optimises on its first calls
        probe, energy = timed_call(model, data, args.device)
    calls = timed_steps(probe, args.time_budget, args.calls)
    seconds = [timed_call(model, data, args.device)[0] for _ in range(calls)]
    return {
        "atoms": len(atoms),
        "dtype": args.dtype,
        "device": args.device,
        "edges": int(data["edge_index"].shape[1]),
        "torch_threads": torch.get_num_threads(),
        "warmup_calls": args.warmup + 1,
        "steps": calls,
        "seconds_per_call": seconds,
        "seconds_per_step": float(np.median(seconds)),
        "energy_per_atom_ev": energy / len(atoms),
        "peak_rss_kib": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mace", type=Path, required=True, help="TorchScript MACE backbone file")
    parser.add_argument("--fused", type=Path, default=None, help="fused file whose MACE to use for another dtype")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, required=True, help="fcc cells per side")
    parser.add_argument("--calls", type=int, default=20, help="most timed calls")
    parser.add_argument("--warmup", type=int, default=11, help="warmup steps of the LAMMPS cases (>= 1)")
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds for the timed calls")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.calls < MIN_TIMED_STEPS:
        parser.error(f"need --warmup >= 1 and --calls >= {MIN_TIMED_STEPS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from probe_md.io_utils import atomic_write_text

    atomic_write_text(args.out, json.dumps(run_bare(args), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
