"""One explore -> collect -> label -> retrain -> rerun loop on the embedded Cu default.

  1. explore  `probe-md run hot_cu.in` with the shipped fused model: hot fcc Cu, PROBE
              scores every N steps and dumps flagged frames (no halt, so the whole run is
              seen; the step where `--patience` consecutive flags would have halted it is
              read from reliability.jsonl: monitoring does not change the trajectory)
  2. collect  `probe-md collect`: a diverse, duplicate-free subset of the flagged frames
  3. label    `probe-md label --calculator cu-snap`: the SNAP reference the default was fitted to
  4. retrain  `probe-md retrain`: mace_run_train fine-tunes the default's pickled model on
              old + new data, the PROBE head is refitted, the fused model exported
  5. rerun    the same input with the retrained fused model

Needs examples/default_cu to have been run (its work/ folder holds the pickled MACE and
the data sets). Usage, from the repository root:

    OMP_NUM_THREADS=1 python examples/retrain_loop/run_loop.py [--steps 200] [--epochs 5]
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

from probe_md.cli.main import main as probe_md_main  # noqa: E402

INPUT = HERE / "hot_cu.in"
DEFAULT_CU_WORK = HERE.parent / "default_cu" / "work"


def probe_md(*argv) -> None:
    """Run one `probe-md` command in this process; stop the loop if it fails."""
    argv = [str(a) for a in argv]
    print(f"\n$ probe-md {' '.join(argv)}", flush=True)
    code = probe_md_main(argv)
    if code != 0:
        raise SystemExit(f"probe-md {argv[0]} failed with exit code {code}")


def shipped_fused_model(work: Path) -> Path:
    """The default's fused model: shipped, else exported from the shipped MACE + head."""
    from probe_md import defaults

    shipped = defaults.DEFAULT_DIR / defaults.FUSED_FILE
    if shipped.is_file():
        return shipped
    target = work / "cu_fused_round0.pt"
    if not target.is_file():
        probe_md("export", "-o", target)  # embedded MACE + head
    return target


def run_numbers(run_dir: Path, patience: int) -> dict:
    """Checks, flagged fraction and the step at which `patience` consecutive flags halt."""
    checks = [json.loads(line) for line in (run_dir / "reliability.jsonl").read_text().splitlines() if line]
    consecutive, halt_step = 0, None
    for check in checks:
        consecutive = consecutive + 1 if check["flagged"] else 0
        if consecutive >= patience and halt_step is None:
            halt_step = check["step"]
    flagged = sum(check["flagged"] for check in checks)
    return {
        "checks": len(checks),
        "flagged_checks": flagged,
        "flagged_fraction": flagged / max(len(checks), 1),
        "halt_step": halt_step,
        "last_step": checks[-1]["step"] if checks else None,
        "mean_reliability": sum((c["probability"] or 0.0) for c in checks) / max(len(checks), 1),
    }


def default_stress_weight() -> float:
    """The stress weight the default was trained with (examples/default_cu/train_mace.py), or 0."""
    sys.path.insert(0, str(HERE.parent / "default_cu"))
    try:
        from train_mace import MACE_HYPERPARAMETERS
    except ImportError:
        return 0.0
    finally:
        sys.path.pop(0)
    if "--loss=stress" not in MACE_HYPERPARAMETERS:
        return 0.0
    weights = [flag.split("=", 1)[1] for flag in MACE_HYPERPARAMETERS if flag.startswith("--stress_weight=")]
    return float(weights[0]) if weights else 1.0


def head_pool_subset(work: Path, size: int, seed: int = 0) -> Path:
    """A random subset of the default's head pool, so the head refit takes minutes, not more."""
    import ase.io
    import numpy as np

    from probe_md.loop.collect import write_extxyz_atomic

    target = work / f"head_pool_{size}.extxyz"
    if not target.is_file():
        pool = ase.io.read(DEFAULT_CU_WORK / "head_pool.extxyz", ":")
        keep = np.sort(np.random.default_rng(seed).choice(len(pool), min(size, len(pool)), replace=False))
        write_extxyz_atomic(target, [pool[i] for i in keep])
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--steps", type=int, default=200, help="MD steps per run")
    parser.add_argument("--every", type=int, default=10, help="PROBE check interval (steps)")
    parser.add_argument("--patience", type=int, default=3, help="consecutive flags that halt a run")
    parser.add_argument("--max-frames", type=int, default=16, help="frames to label")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument("--max-old", type=int, default=100, help="old training frames replayed")
    parser.add_argument("--head-pool", type=int, default=400, help="head-pool structures for the refit")
    parser.add_argument("--fused", type=Path, default=None,
                        help="fused model to explore with (default: the embedded default's); its MACE "
                             "must be the embedded one, which collect and retrain use")
    args = parser.parse_args(argv)
    for name in ("mlip_train.extxyz", "mlip_valid.extxyz", "head_pool.extxyz"):
        if not (DEFAULT_CU_WORK / name).is_file():
            raise SystemExit(f"{DEFAULT_CU_WORK / name} is missing: run examples/default_cu first (see its README)")

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}
    md_flags = ["--every", args.every, "--on-drop", "dump", "--quiet", "--var", f"nsteps={args.steps}"]

    # 1. explore with the model in use
    t = time.perf_counter()
    fused0 = args.fused or shipped_fused_model(work)
    if (work / "round0" / "summary.json").is_file():  # a finished exploration: reuse it
        print(f"\nreusing the exploration in {work / 'round0'} (delete it to rerun)")
    else:
        probe_md("run", INPUT, "--var", f"model={fused0}", "--out", work / "round0", *md_flags)
    before_md = run_numbers(work / "round0", args.patience)
    timings["explore_s"] = time.perf_counter() - t
    if before_md["flagged_checks"] == 0:
        raise SystemExit("the exploration flagged nothing: raise t_md in hot_cu.in or --steps")

    # 2-3. collect and label
    t = time.perf_counter()
    probe_md("collect", work / "round0", "-o", work / "pool.extxyz", "--max", args.max_frames, "--no-progress")
    probe_md("label", work / "pool.extxyz", "-o", work / "labelled.extxyz", "--calculator", "cu-snap", "--no-progress")
    timings["collect_label_s"] = time.perf_counter() - t

    # 4. retrain: the default's pickled model, its data sets and a subset of its head pool
    t = time.perf_counter()
    probe_md(
        "retrain", "--new-data", work / "labelled.extxyz", "-o", work / "round1",
        "--epochs", args.epochs, "--max-old", args.max_old, "--stress-weight", default_stress_weight(),
        "--head-data", head_pool_subset(work, args.head_pool), "--head-max-epochs", 150,
    )
    report = json.loads((work / "round1" / "retrain_report.json").read_text())
    timings["retrain_s"] = time.perf_counter() - t
    fused1 = Path(report["files"].get("fused", ""))
    if not fused1.is_file():
        raise SystemExit(f"no retrained fused model ({'; '.join(report['notes'])}): cannot rerun")

    # 5. rerun the same input with the retrained model
    t = time.perf_counter()
    probe_md("run", INPUT, "--var", f"model={fused1}", "--out", work / "round1_md", *md_flags)
    after_md = run_numbers(work / "round1_md", args.patience)
    timings["rerun_s"] = time.perf_counter() - t

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
    ]
    print(f"\nretrain loop: {args.steps} MD steps per run, {report['frames']['new_train']} new frames trained on, "
          f"{report['frames']['new_holdout']} held out, {args.epochs} epochs")
    print(f"{'':<46}{'before':>10}{'after':>10}")
    for label, before, after in rows:
        def cell(value):
            if value is None:
                return f"{'no halt':>10}"
            return f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}"
        print(f"{label:<46}{cell(before)}{cell(after)}")
    summary = {"before_md": before_md, "after_md": after_md, "retrain_report": report,
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "total_s": round(time.perf_counter() - started, 1), "args": {k: str(v) for k, v in vars(args).items()}}
    (work / "loop_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"(halt steps read from reliability.jsonl; 'no halt' = never {args.patience} flags in a row)")
    print(f"total {summary['total_s']:.0f} s; details in {work / 'loop_summary.json'}")


if __name__ == "__main__":
    main()
