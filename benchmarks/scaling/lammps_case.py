"""One LAMMPS case of the scaling benchmark, in its own process (1 rank, or under `mpirun`).

  python lammps_case.py --plugin P --model fused.pt --repeat 6 --exchange yes --out case.json

fcc Cu (4*repeat^3 atoms) at 300 K, NVE, 2 fs, scored every `--every` steps with thermo on the
scored steps. After `--warmup` untimed steps the last of which sizes the timed run to
`--time-budget` (at least 2 steps, at most `--steps`), it times one `run` and rank 0 writes
s/step, local and ghost atoms per rank and peak RSS per rank to `--out` (JSON).
Its LAMMPS log goes next to `--out` (.log). run.py starts it; run it by hand only to debug one case.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcc_cu import system_commands  # noqa: E402

TIMESTEP_PS = 0.002
TEMPERATURE_K = 300.0
MIN_TIMED_STEPS = 2


def pair_style_command(model: Path, exchange: str, device: str = "cpu", timing: bool = False) -> str:
    """The pair style line of a case (the one place that knows its keywords)."""
    return f"pair_style probe/mace {model} device {device} exchange {exchange} timing {'yes' if timing else 'no'}"


def dynamics_commands(pair_style: str, every: int, seed: int) -> list[str]:
    # thermo on the scored steps so the compute is really read, as a monitored run does
    return [
        pair_style,
        "pair_coeff * * Cu",
        "neighbor 1.0 bin",
        f"compute rel all probe/reliability every {every}",
        "thermo_style custom step pe c_rel[1]",
        f"thermo {every}",
        "thermo_modify flush no",
        f"timestep {TIMESTEP_PS}",
        f"velocity all create {TEMPERATURE_K} {seed} mom yes rot yes dist gaussian",
        "fix nve all nve",
    ]


def timed_steps(probe_seconds_per_step: float, budget_seconds: float, max_steps: int) -> int:
    """Steps that fit the budget at the probed speed, between MIN_TIMED_STEPS and max_steps."""
    fitting = int(budget_seconds / max(probe_seconds_per_step, 1e-9))
    return max(MIN_TIMED_STEPS, min(max_steps, fitting))


def scored_steps(first: int, last: int, every: int) -> int:
    """Steps in first..last that run the head: multiples of `every`, plus the run's last step."""
    multiples = last // every - (first - 1) // every
    return multiples + (0 if last % every == 0 else 1)


def setup_report(log_path: Path) -> dict:
    """What LAMMPS and the plugin said at setup: the ghost cutoff and the plugin's own line
    (model, dtype, exchange mode, torch threads), so a case shows what it really ran."""
    text = log_path.read_text() if log_path.is_file() else ""
    cutoff = re.search(r"ghost atom cutoff = (\S+)", text)
    plugin_line = next((line.strip() for line in text.splitlines() if line.startswith("probe/mace:")), None)
    mode = re.search(r"exchange (yes|no)", plugin_line or "")
    return {"ghost_cutoff_a": float(cutoff.group(1)) if cutoff else None, "plugin_setup_line": plugin_line,
            "exchange_used": mode.group(1) if mode else None}


def timed_phases(lmp, log_path: Path) -> dict[str, float]:
    """`timing yes`'s seconds per step of each phase over the timed run (+ the setup step of
    the `run 0` that makes the pair style report; slowest rank), from the LAMMPS log."""
    lmp.command("run 0 post yes")
    lmp.flush_buffers()
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("probe/mace timing:")]
    if not lines:
        return {}
    phases = re.findall(r"(\w+) (\d[\d.e+-]*)", lines[-1].split("rank:")[1])
    return {name: float(value) for name, value in phases}


def timed_run(lmp, comm, steps: int) -> float:
    """Wall seconds of `run steps` on the slowest rank (no re-setup: `pre no post no`)."""
    from mpi4py import MPI

    comm.Barrier()
    start = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    comm.Barrier()
    return comm.allreduce(time.perf_counter() - start, op=MPI.MAX)


def per_rank_counts(lmp, comm) -> dict[str, list[int]]:
    """Local and ghost atoms and peak RSS (KiB, Linux ru_maxrss) of every rank, on rank 0."""
    mine = (
        int(lmp.extract_global("nlocal")),
        int(lmp.extract_global("nghost")),
        int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    )
    gathered = comm.gather(mine, root=0) or []
    return {
        "local_atoms_per_rank": [g[0] for g in gathered],
        "ghost_atoms_per_rank": [g[1] for g in gathered],
        "peak_rss_kib_per_rank": [g[2] for g in gathered],
    }


def run_case(args: argparse.Namespace, lammps, comm) -> dict:
    log_path = args.out.with_suffix(".log")  # rank 0 writes it; read back for setup_report
    lmp = lammps.lammps(comm=comm, cmdargs=["-screen", "none", "-log", str(log_path), "-nocite"])
    try:
        lmp.command(f"plugin load {args.plugin}")
        pair_style = pair_style_command(args.model, args.exchange, args.device, args.timing)
        for command in system_commands(args.repeat) + dynamics_commands(pair_style, args.every, args.seed):
            lmp.command(command)
        lmp.command("run 0")  # setup: the first TorchScript call, on the perfect lattice
        pe_step0 = float(lmp.get_thermo("pe"))
        lmp.flush_buffers()
        setup = setup_report(log_path)
        if args.warmup > 1:
            lmp.command(f"run {args.warmup - 1} pre no post no")
        probe = timed_run(lmp, comm, 1)  # the last warmup step sizes the timed run
        steps = comm.bcast(timed_steps(probe, args.time_budget, args.steps), root=0)
        first = int(lmp.extract_global("ntimestep")) + 1
        if args.timing:
            lmp.command("run 0 post yes")  # the phase timer reports and restarts at each full run end
        seconds = timed_run(lmp, comm, steps)
        phases = timed_phases(lmp, log_path) if args.timing else None
        result = {
            "atoms": int(lmp.get_natoms()),
            "ranks": comm.Get_size(),
            "pair_style": pair_style,
            "warmup_steps": args.warmup,
            "probe_seconds_per_step": probe,
            "steps": steps,
            "scored_steps": scored_steps(first, first + steps - 1, args.every),
            "seconds": seconds,
            "seconds_per_step": seconds / steps,
            "pe_per_atom_step0_ev": pe_step0 / int(lmp.get_natoms()),
        }
        if phases is not None:
            result["phase_seconds_per_step"] = phases
        result.update(setup)
        result.update(per_rank_counts(lmp, comm))
        return result
    finally:
        lmp.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="fused model file")
    parser.add_argument("--repeat", type=int, required=True, help="fcc cells per side")
    parser.add_argument("--exchange", choices=("yes", "no"), default="yes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="pair style `device`")
    parser.add_argument("--timing", action="store_true",
                        help="pair style `timing yes`: each phase's s/step in the result (phase_seconds_per_step)")
    parser.add_argument("--steps", type=int, default=20, help="most timed steps")
    parser.add_argument("--warmup", type=int, default=11, help="untimed steps first (>= 1)")
    parser.add_argument("--every", type=int, default=10, help="scoring interval")
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds for the timed run")
    parser.add_argument("--seed", type=int, default=4928459)
    parser.add_argument("--out", type=Path, required=True, help="result JSON (written by rank 0)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < MIN_TIMED_STEPS or args.every < 1:
        parser.error(f"need --warmup >= 1, --steps >= {MIN_TIMED_STEPS} and --every >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from probe_md.io_utils import atomic_write_text
    from probe_md.lammps.runtime import import_lammps

    lammps = import_lammps()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        result = run_case(args, lammps, comm)
    except Exception as error:  # one line for run.py's log, then stop every rank
        message = " ".join(str(error).split())
        print(f"lammps_case rank {comm.Get_rank()}: {type(error).__name__}: {message}", file=sys.stderr, flush=True)
        comm.Abort(1)
        return 1
    if comm.Get_rank() == 0:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
