"""Carving check: reference forces on core atoms are the same in the carved structure as in the frame.

  python benchmarks/carving/run.py FLAGGED [FLAGGED ...] [--frames 12] [--buffers 3 4 5 6 7 8]

FLAGGED are run folders or flagged.extxyz files written by the probe-md monitor (real flagged
frames with per-atom importance). Every frame is carved with `collect --carve`'s defaults
(top-k 8 core atoms of importance >= 2, link and gap r_max = 4 Å of the embedded Cu model)
at each buffer; the SNAP Cu reference (cu-snap) labels the frame and every carved structure,
and the force on each core atom in the carved structure is compared with the same atom's
force in the frame (norm of the difference). Periodic boxes at every buffer, clusters in vacuum
at the default buffer (layers x r_max = 8 Å). Writes benchmarks/results/carving.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from probe_md.loop.carve import ARRAY_CORE, ARRAY_FRAME_INDEX, CarveConfig, carve_frame
from probe_md.loop.collect import read_flagged_frames
from probe_md.reference import reference_calculator

RESULTS = Path(__file__).resolve().parents[1] / "results" / "carving.json"
R_MAX, LAYERS = 4.0, 2  # the embedded Cu MACE
TOLERANCE_MEV_PER_A = 1.0  # the criterion: median core-force difference


def snap_forces(atoms, calculator) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = calculator
    return np.array(atoms.get_forces())


def core_force_errors(frame, frame_forces, config, calculator) -> tuple[list[np.ndarray], list[int]]:
    """(|ΔF| in meV/Å of the core atoms, per region; atoms per region)."""
    errors, sizes = [], []
    for piece in carve_frame(frame, config):
        core = np.asarray(piece.arrays[ARRAY_CORE], dtype=bool)
        carved = snap_forces(piece, calculator)[core]
        original = frame_forces[piece.arrays[ARRAY_FRAME_INDEX][core]]
        errors.append(1000.0 * np.linalg.norm(carved - original, axis=1))
        sizes.append(len(piece))
    return errors, sizes


def summary(errors: list[np.ndarray], sizes: list[int]) -> dict:
    flat = np.concatenate(errors)
    return {
        "regions": len(errors),
        "core_atoms": int(flat.size),
        "median_mev_per_a": float(np.median(flat)),
        "max_mev_per_a": float(flat.max()),
        "region_median_of_max_mev_per_a": float(np.median([e.max() for e in errors])),
        "atoms_per_region_mean": float(np.mean(sizes)),
        "atoms_per_region_max": int(np.max(sizes)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("flagged", type=Path, nargs="+")
    parser.add_argument("--frames", type=int, default=12, help="frames per input (evenly spaced)")
    parser.add_argument("--buffers", type=float, nargs="+", default=[3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    frames = []
    for path in args.flagged:
        found, _ = read_flagged_frames(path)
        frames += [found[i] for i in np.unique(np.linspace(0, len(found) - 1, args.frames).astype(int))]
    calculator = reference_calculator("cu-snap")
    started = time.time()
    frame_forces = [snap_forces(frame, calculator) for frame in frames]
    rows = []
    for periodic, buffers in ((True, args.buffers), (False, [LAYERS * R_MAX])):
        for buffer in buffers:
            config = CarveConfig(buffer=buffer, periodic=periodic).with_receptive_field(R_MAX, LAYERS)
            errors, sizes = [], []
            for frame, forces in zip(frames, frame_forces):
                region_errors, region_sizes = core_force_errors(frame, forces, config, calculator)
                errors += region_errors
                sizes += region_sizes
            row = {"buffer_a": buffer, "box": "periodic" if periodic else "cluster", **summary(errors, sizes)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    passing = [r["buffer_a"] for r in rows if r["box"] == "periodic" and r["median_mev_per_a"] <= TOLERANCE_MEV_PER_A]
    result = {
        "command": "python benchmarks/carving/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "reference": "cu-snap (quadratic SNAP Cu, Zuo et al. 2020; cutoff 3.9 Å)",
        "inputs": [str(p) for p in args.flagged],
        "frames": len(frames),
        "frame_atoms": sorted({len(f) for f in frames}),
        "carving": {"top_k": CarveConfig().top_k, "min_importance": CarveConfig().min_importance,
                    "link_a": R_MAX, "gap_a": R_MAX},
        "tolerance_median_mev_per_a": TOLERANCE_MEV_PER_A,
        "smallest_passing_buffer_a": min(passing) if passing else None,
        "default_buffer_a": LAYERS * R_MAX,
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from probe_md.io_utils import atomic_write_text

    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
