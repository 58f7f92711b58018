"""Threads or ranks? The same cores used as 1 rank x T torch threads or as T ranks x 1 thread.

  python benchmarks/scaling/threads.py [--repeat 8] [--cores 2] [--rounds 3] [--steps 10]

Each layout runs lammps_case.py (exchange yes, float64, scored every 10 steps) in its own
process with OMP_NUM_THREADS set to its thread count (the plugin gives torch that many
threads); the layouts are interleaved over `--rounds` rounds and the median round counts.
Writes benchmarks/results/threads.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[0] / "results" / "threads.json"
sys.path.insert(0, str(HERE))


def layouts(cores: int) -> list[tuple[int, int]]:
    """(ranks, threads) pairs that fill `cores`, plus 1 x 1 as the reference."""
    pairs = [(1, 1)] + [(cores // t, t) for t in range(1, cores + 1) if cores % t == 0]
    return list(dict.fromkeys(pairs))


def run_layout(ranks: int, threads: int, args, plugin: Path, model: Path, out: Path) -> dict:
    from run import mpirun_path

    worker = [sys.executable, str(HERE / "lammps_case.py"), "--plugin", str(plugin), "--model", str(model),
              "--repeat", str(args.repeat), "--exchange", "yes", "--steps", str(args.steps),
              "--time-budget", "1e9", "--out", str(out)]
    command = worker if ranks == 1 else [str(mpirun_path()), "-np", str(ranks)] + worker
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} x {threads}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8, help="fcc cells per side (8: 2048 atoms)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per layout and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from probe_md import defaults
    from probe_md.lammps.export import export_fused_model
    from probe_md.io_utils import atomic_write_text
    from probe_md.lammps.build import plugin_path

    plugin = plugin_path(build=True)
    rows: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts(args.cores)}
    setup_lines = {}
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "fused.pt"
        export_fused_model(defaults.default_model_path(), defaults.default_head_path(), model)
        for round_index in range(args.rounds):
            for ranks, threads in rows:
                result = run_layout(ranks, threads, args, plugin, model, Path(folder) / "case.json")
                rows[(ranks, threads)].append(result["seconds_per_step"])
                setup_lines[f"{ranks}x{threads}"] = result.get("plugin_setup_line", "")
                print(f"round {round_index + 1}: {ranks} rank(s) x {threads} thread(s): "
                      f"{result['seconds_per_step']:.4f} s/step", flush=True)
    reference = statistics.median(rows[(1, 1)])
    table = [{"ranks": r, "threads": t, "seconds_per_step": statistics.median(s), "rounds": s,
              "speedup_vs_1x1": reference / statistics.median(s)} for (r, t), s in rows.items()]
    atoms = 4 * args.repeat**3
    atomic_write_text(args.out, json.dumps({"atoms": atoms, "cores": args.cores, "layouts": table,
                                            "plugin_setup_lines": setup_lines}, indent=2) + "\n")
    print(f"\n| layout ({atoms} atoms) | s/step (median of {args.rounds}) | speed-up vs 1 x 1 |\n|---|---|---|")
    for row in table:
        print(f"| {row['ranks']} rank(s) x {row['threads']} thread(s) | {row['seconds_per_step']:.4f} | "
              f"{row['speedup_vs_1x1']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
