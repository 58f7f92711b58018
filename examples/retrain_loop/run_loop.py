"""Explore -> collect -> label -> retrain -> rerun rounds on the embedded Cu default.

  1. explore  `probe-md run hot_cu.in` (fcc Cu heated 600 -> 1200 K) with the model in use:
              PROBE scores every N steps and dumps flagged frames; the run is not halted, so
              all of it is seen, and the step where `--patience` consecutive flags would have
              halted it is read from reliability.jsonl (monitoring does not change the trajectory)
  2. collect  `probe-md collect`: a diverse, duplicate-free subset of the flagged frames
  3. label    `probe-md label --calculator cu-snap`: the SNAP reference the default was fitted to
  4. retrain  `probe-md retrain`: mace_run_train fine-tunes the previous model (round 1: the
              default's pickled model) on replayed old + new data, the PROBE head is refitted
              with the same threshold and recalibrated (`--calibration-data`) on every
              `--calibration-every`-th step of the explored run (`probe-md run
              --sample-every`), flagged or not, labelled (frames it trains on left out); the
              fused model exported
  5. rerun    the same input with the retrained fused model: the exploration of the next round

Files in --work: md0/ (the model in use; sampled.extxyz: every --calibration-every-th step),
pool1.extxyz, labelled1.extxyz, calibration1.extxyz (the recalibration frames), round1/
(retrain), md1/ (rerun), pool2.extxyz, ...; with --verify, verify_md<N>/ and
verify_labelled<N>.extxyz.
Everything it needs ships with probe-md (the default's MACE with its architecture config,
its training/validation data and head pool). Usage, from the repository root:

    python examples/retrain_loop/run_loop.py [--rounds 1] [--steps 400] [--epochs 40]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("probe_md") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parents[1]))

from probe_md import defaults  # noqa: E402
from probe_md.cli.main import main as probe_md_main  # noqa: E402

INPUT = HERE / "hot_cu.in"


def probe_md(*argv) -> None:
    """Run one `probe-md` command in this process; stop the loop if it fails."""
    argv = [str(a) for a in argv]
    print(f"\n$ probe-md {' '.join(argv)}", flush=True)
    code = probe_md_main(argv)
    if code != 0:
        raise SystemExit(f"probe-md {argv[0]} failed with exit code {code}")


def shipped_fused_model(work: Path) -> Path:
    """The default's fused model, exported from the shipped MACE + head."""
    target = work / "cu_fused_round0.pt"
    if not target.is_file():
        probe_md("export", "-o", target)  # embedded MACE + head
    return target


def run_numbers(run_dir: Path, patience: int, ramp_k: tuple[float, float], steps: int) -> dict:
    """Checks, flagged fraction, the step at which `patience` consecutive flags halt, and the
    thermostat target there (the instantaneous temperature of 108 atoms swings by ±100 K)."""
    checks = [json.loads(line) for line in (run_dir / "reliability.jsonl").read_text().splitlines() if line]
    consecutive, halt_step = 0, None
    for check in checks:
        consecutive = consecutive + 1 if check["flagged"] else 0
        if consecutive >= patience and halt_step is None:
            halt_step = check["step"]
    flagged = sum(check["flagged"] for check in checks)
    return {
        "target_temperature_at_halt_k": None if halt_step is None
        else ramp_k[0] + (ramp_k[1] - ramp_k[0]) * halt_step / steps,
        "checks": len(checks),
        "flagged_checks": flagged,
        "flagged_fraction": flagged / max(len(checks), 1),
        "halt_step": halt_step,
        "last_step": checks[-1]["step"] if checks else None,
        "mean_reliability": sum((c["probability"] or 0.0) for c in checks) / max(len(checks), 1),
    }


def default_loss_weights() -> dict[str, float]:
    """The loss weights of the default's last training stage (examples/default_cu/train_mace.py).

    Fine-tuning with other weights trades what the foundation fitted: with mace's default
    energy weight 1 instead of the stage-two 1000, a 5-epoch fine-tune moved the validation
    energy error from 0.6 to 8 meV/atom.
    """
    sys.path.insert(0, str(HERE.parent / "default_cu"))
    try:
        from train_mace import MACE_HYPERPARAMETERS
    finally:
        sys.path.pop(0)
    flags = dict(flag.split("=", 1) for flag in MACE_HYPERPARAMETERS if "=" in flag)
    stage = "--swa_" if "--swa" in MACE_HYPERPARAMETERS else "--"
    weights = {name: float(flags.get(f"{stage}{name}_weight", flags.get(f"--{name}_weight", default)))
               for name, default in (("energy", 1.0), ("forces", 100.0), ("stress", 1.0))}
    if flags.get("--loss") != "stress":
        weights["stress"] = 0.0
    return weights


def replay_data(work: Path, round_index: int, max_old: int, seed: int = 0) -> Path:
    """Old data replayed in round `round_index`: `max_old` random frames of the default's training
    set plus every frame earlier rounds trained on (they are part of the model by now)."""
    import ase.io
    import numpy as np

    from probe_md.loop.collect import write_extxyz_atomic

    target = work / f"replay{round_index}.extxyz"
    old = ase.io.read(defaults.default_mlip_train_path(), ":")
    keep = np.sort(np.random.default_rng(seed).choice(len(old), min(max_old, len(old)), replace=False))
    frames = [old[i] for i in keep]
    for earlier in range(1, round_index):
        frames += ase.io.read(work / f"round{earlier}" / "data" / "new_train.extxyz", ":")
    write_extxyz_atomic(target, frames)
    return target


def clear_stale_work(work: Path, settings: dict) -> None:
    """Drop the outputs of a loop run with other settings: reusing them would mix two protocols
    (and mace_run_train --restart_latest would resume the old fine-tune). More --rounds reuse
    the finished ones."""
    import hashlib
    import shutil

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    settings = {**settings, "input_sha256": sha256(INPUT), "model_sha256": sha256(defaults.default_model_path()),
                "head_sha256": sha256(defaults.default_head_path())}
    record = work / "loop_settings.json"
    if record.is_file() and json.loads(record.read_text()) == settings:
        return
    stale = sorted(p for pattern in ("md*", "pool*.extxyz", "labelled*", "replay*.extxyz", "round*", "verify*",
                                     "calibration*", "cu_fused_round0.pt")
                   for p in work.glob(pattern))
    if stale:
        print(f"settings changed since the last loop in {work}: removing {', '.join(p.name for p in stale)}")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    record.write_text(json.dumps(settings, indent=2) + "\n")


def md_run(work: Path, index: int, fused: Path, md_flags: list) -> Path:
    """MD with the model of round `index` (0: the one in use) into work/md{index}, once."""
    run_dir = work / f"md{index}"
    if (run_dir / "summary.json").is_file():
        print(f"\nreusing the finished run {run_dir} (same settings; delete it to rerun)")
    else:
        probe_md("run", INPUT, "--var", f"model={fused}", "--out", run_dir, *md_flags)
    return run_dir


def calibration_frames(work: Path, index: int) -> Path | None:
    """Round `index`'s recalibration frames: md{index-1}'s sampled frames (every
    --calibration-every steps, flagged or not), less the steps collected for training, labelled;
    None (with a note) below calibrate's minimum."""
    import ase.io

    from probe_md.calibration import MIN_FRAMES_FOR_RECALIBRATION
    from probe_md.loop.collect import write_extxyz_atomic

    collected = {int(a.info["step"]) for a in ase.io.read(work / f"pool{index}.extxyz", ":")}
    frames = [a for a in ase.io.read(work / f"md{index - 1}" / "sampled.extxyz", ":")
              if int(a.info["step"]) not in collected]
    if len(frames) < MIN_FRAMES_FOR_RECALIBRATION:
        print(f"\nround {index}: {len(frames)} calibration frames (< {MIN_FRAMES_FOR_RECALIBRATION}): "
              "the head is recalibrated on the held-out new frames, if enough (lower --calibration-every)")
        return None
    unlabelled, labelled = work / f"calibration{index}_unlabelled.extxyz", work / f"calibration{index}.extxyz"
    write_extxyz_atomic(unlabelled, frames)
    probe_md("label", unlabelled, "-o", labelled, "--calculator", "cu-snap", "--no-progress")
    return labelled


def retrain_round(work: Path, index: int, args, weights: dict) -> dict:
    """Collect the flagged frames of md{index-1}, label them, fine-tune the previous round's model."""
    from probe_md.loop.retrain import default_foundation_model

    previous = work / f"round{index - 1}"
    first = index == 1
    pool, labelled, out = work / f"pool{index}.extxyz", work / f"labelled{index}.extxyz", work / f"round{index}"
    probe_md("collect", work / f"md{index - 1}", "-o", pool, "--max", args.max_frames, "--no-progress")
    probe_md("label", pool, "-o", labelled, "--calculator", "cu-snap", "--no-progress")
    calibration = calibration_frames(work, index) if args.calibration_every else None
    if (out / "retrain_report.json").is_file() and (out / "fused.pt").is_file():
        print(f"\nreusing the finished retrain {out}")
    else:
        probe_md(
            "retrain", "--new-data", labelled, "-o", out,
            "--foundation-model", default_foundation_model() if first else previous / "model.pt",
            "--before-model", defaults.default_model_path() if first else previous / "model.pt",
            "--before-head", defaults.default_head_path() if first else previous / "head.pt",
            "--old-data", replay_data(work, index, args.max_old), "--valid-data", defaults.default_mlip_valid_path(),
            "--head-data", defaults.default_head_pool_path(), "--head-max-epochs", 150,
            "--epochs", args.epochs, "--lr", args.lr,
            "--energy-weight", weights["energy"], "--forces-weight", weights["forces"],
            "--stress-weight", weights["stress"], "--new-frame-weight", args.new_frame_weight,
            "--new-valid-fraction", 0.15,
            *(["--calibration-data", calibration] if calibration else []),
        )
    report = json.loads((out / "retrain_report.json").read_text())
    if not (out / "fused.pt").is_file():
        raise SystemExit(f"round {index}: no retrained fused model ({'; '.join(report['notes'])}): cannot rerun")
    return report


def print_round(index: int, report: dict, before_md: dict, after_md: dict, args) -> None:
    errors_before, errors_after = report["errors_before"], report["errors_after"]
    rows = [
        ("force RMSE, new frames held out (eV/Å)",
         errors_before["new_holdout"]["force_rmse_ev_per_a"], errors_after["new_holdout"]["force_rmse_ev_per_a"]),
        ("force RMSE, new frames trained on (eV/Å)",
         errors_before["new_train"]["force_rmse_ev_per_a"], errors_after["new_train"]["force_rmse_ev_per_a"]),
        ("force RMSE, default validation set (eV/Å)",
         errors_before["valid"]["force_rmse_ev_per_a"], errors_after["valid"]["force_rmse_ev_per_a"]),
        ("flagged checks (fraction)", before_md["flagged_fraction"], after_md["flagged_fraction"]),
        ("mean P(reliable) over the run", before_md["mean_reliability"], after_md["mean_reliability"]),
        (f"steps before halting (patience {args.patience})", before_md["halt_step"], after_md["halt_step"]),
        ("thermostat target at that step (K)",
         before_md["target_temperature_at_halt_k"], after_md["target_temperature_at_halt_k"]),
    ]
    frames = report["frames"]
    print(f"\nround {index}: {args.steps} MD steps per run, {frames['new_train']} new frames trained on, "
          f"{frames['new_valid']} validated on, {frames['new_holdout']} held out, {args.epochs} epochs")
    print(f"{'':<46}{'before':>10}{'after':>10}")
    for label, before, after in rows:
        print(f"{label:<46}{_cell(before)}{_cell(after)}")
    if report.get("head"):
        from probe_md.loop.retrain import recalibration_line

        print("refitted head," + recalibration_line(report["head"].get("recalibration"))[1:])


def _cell(value) -> str:
    if value is None:
        return f"{'no halt':>10}"
    return f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}"


def verify_last_run(work: Path, rounds: int, md_flags: list, every: int = 20) -> dict:
    """Ground truth for the last model's run: the same MD, every `every`-th step dumped, labelled
    with the reference; force RMSE of every round's model on those frames vs P(reliable)."""
    import ase.io
    import numpy as np

    from probe_md.backbone.mace import MaceBackbone
    from probe_md.training import load_head

    run_dir = work / f"verify_md{rounds}"
    flags = [*md_flags[2:], "--every", every, "--sample-every", every]  # md_flags[2:]: after --every
    if not (run_dir / "summary.json").is_file():
        probe_md("run", INPUT, "--var", f"model={work / f'round{rounds}' / 'fused.pt'}", "--out", run_dir, *flags)
    probe_md("label", run_dir / "sampled.extxyz", "-o", work / f"verify_labelled{rounds}.extxyz",
             "--calculator", "cu-snap", "--no-progress")
    frames = ase.io.read(work / f"verify_labelled{rounds}.extxyz", ":")
    threshold = load_head(defaults.default_head_path())[1].threshold
    models = {"round0": defaults.default_model_path(),
              **{f"round{r}": work / f"round{r}" / "model.pt" for r in range(1, rounds + 1)}}
    result = {"steps": [int(a.info["step"]) for a in frames],
              "reliability": [float(a.info["reliability"]) for a in frames], "threshold": threshold}
    print(f"\nground truth on {len(frames)} frames of the round-{rounds} model's run "
          f"(cu-snap reference, threshold {threshold * 1000:.1f} meV/Å):")
    for name, path in models.items():
        predictions = MaceBackbone.from_file(path).predict(frames)
        rmse = np.array([np.sqrt(np.mean((p.forces - a.arrays["REF_forces"]) ** 2)) for p, a in zip(predictions, frames)])
        result[name] = {"force_rmse_ev_per_a": rmse.tolist(), "reliable_fraction": float(np.mean(rmse < threshold))}
        print(f"  {name} model: force RMSE median {np.median(rmse) * 1000:.0f}, max {rmse.max() * 1000:.0f} meV/Å, "
              f"{np.mean(rmse < threshold):.0%} of frames below the threshold")
    print(f"  PROBE of the round-{rounds} model: P(reliable) {min(result['reliability']):.2f}-"
          f"{max(result['reliability']):.2f}, {np.mean(np.array(result['reliability']) < 0.5):.0%} flagged")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--rounds", type=int, default=1, help="explore -> ... -> rerun rounds (default 1)")
    parser.add_argument("--steps", type=int, default=400, help="MD steps per run")
    parser.add_argument("--t-start", type=float, default=600.0, help="thermostat target at step 0 (K)")
    parser.add_argument("--t-stop", type=float, default=1200.0, help="thermostat target at the last step (K)")
    parser.add_argument("--every", type=int, default=5, help="PROBE check interval (steps)")
    parser.add_argument("--patience", type=int, default=3, help="consecutive flags that halt a run")
    parser.add_argument("--max-frames", type=int, default=32, help="frames to label per round")
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs per round")
    parser.add_argument("--lr", type=float, default=2e-3, help="fine-tuning learning rate")
    parser.add_argument("--new-frame-weight", type=float, default=5.0,
                        help="loss weight of a new frame relative to a replayed old one")
    parser.add_argument("--max-old", type=int, default=100, help="frames of the default's training set replayed")
    parser.add_argument("--calibration-every", type=int, default=10,
                        help="recalibrate each refitted head on every N-th step (a multiple of --every) of the "
                             "run it learns from, labelled (0: on the held-out flagged frames only; default "
                             "%(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="afterwards, label frames of the last model's run with the reference and "
                             "compare every round's force error with PROBE's verdict (~3 min)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    clear_stale_work(work, {k: str(v) for k, v in vars(args).items() if k not in ("work", "rounds", "verify")})
    started = time.perf_counter()
    md_flags = ["--every", args.every, "--on-drop", "dump", "--quiet", "--var", f"nsteps={args.steps}",
                "--var", f"t_start={args.t_start}", "--var", f"t_stop={args.t_stop}"]
    # every --calibration-every steps the explore runs also write their frame, flagged or not
    explore_flags = md_flags + (["--sample-every", args.calibration_every] if args.calibration_every else [])
    ramp = (args.t_start, args.t_stop)
    weights = default_loss_weights()

    t = time.perf_counter()
    runs = [run_numbers(md_run(work, 0, shipped_fused_model(work), explore_flags), args.patience, ramp, args.steps)]
    timings = {"md0_s": time.perf_counter() - t}
    rounds = []
    for index in range(1, args.rounds + 1):
        if runs[-1]["flagged_checks"] == 0:
            print(f"\nmd{index - 1} flagged nothing: no round {index} (raise --t-stop or --steps to explore further)")
            break
        t = time.perf_counter()
        report = retrain_round(work, index, args, weights)
        timings[f"round{index}_collect_label_retrain_s"] = time.perf_counter() - t
        t = time.perf_counter()
        runs.append(run_numbers(md_run(work, index, work / f"round{index}" / "fused.pt", explore_flags),
                                args.patience, ramp, args.steps))
        timings[f"md{index}_s"] = time.perf_counter() - t
        print_round(index, report, runs[-2], runs[-1], args)
        rounds.append({"before_md": runs[-2], "after_md": runs[-1], "retrain_report": report})

    verification = verify_last_run(work, len(rounds), md_flags) if args.verify and rounds else None
    summary = {"runs": runs, "rounds": rounds, "verification": verification, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "total_s": round(time.perf_counter() - started, 1), "args": {k: str(v) for k, v in vars(args).items()}}
    (work / "loop_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"(halts read from reliability.jsonl: monitoring does not change the trajectory; "
          f"'no halt' = never {args.patience} flags in a row)")
    print(f"total {summary['total_s']:.0f} s (reused stages count 0); details in {work / 'loop_summary.json'}")


if __name__ == "__main__":
    main()
