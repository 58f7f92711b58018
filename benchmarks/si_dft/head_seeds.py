"""Si DFT, force-RMSE criterion: how much of PROBE's lead over the ensemble is the head's seed?

For each backbone, heads with seeds 1..S-1 are trained exactly as run.py trains seed 0 (the
defaults of `probe-md train --seed S`: force norm read, threshold from the MLIP validation
cells) on the same `probe_train` split, and scored on the same test cells with the same
ensemble. Seed 0 is also trained without the force-norm column (`--no-force-norm`), so the
column's own effect shows. Needs the MLIPs of run.py (`--criterion force-rmse` once per
backbone first).

Usage: nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/si_dft/head_seeds.py [--backbones ...] [--seeds 4]
Writes benchmarks/results/si_dft_head_seeds.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

import data  # noqa: E402
import mlips  # noqa: E402
from run import BACKBONES, CHGNET, chgnet_members  # noqa: E402

from probe_md.evaluation import EvaluateRequest, evaluate, write_json  # noqa: E402
from probe_md.pipeline import TrainRequest, train_probe  # noqa: E402
from probe_md.training import TrainingConfig  # noqa: E402

CRITERION = "force-rmse"


def members_of(name: str, work: Path) -> list[Path]:
    if name == CHGNET:
        return chgnet_members(work)
    found = [mlips.member_path(work, mlips.CONFIGS[name], seed) for seed in range(4)]
    return [path for path in found if path.is_file()]


def head_path(work: Path, name: str, seed: int, force_norm: bool = True) -> Path:
    """Seed 0 with the column is run.py's head file; the others sit beside it."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    return work / "heads" / f"{name}-{CRITERION}-{'' if force_norm else 'no-'}force-norm{suffix}.pt"


def score_seed(name: str, seed: int, paths: dict, work: Path, force_norm: bool = True) -> dict:
    members = members_of(name, work)
    if not members:
        raise SystemExit(f"{name}: no MLIPs in {work / 'mlips'} (run run.py --backbones {name} --criterion {CRITERION} first)")
    head = head_path(work, name, seed, force_norm)
    if not head.is_file():
        train_probe(TrainRequest(
            model_path=members[0], data_paths=[paths["probe_train"]], output_path=head,
            in_domain_path=paths["mlip_valid"], criterion=CRITERION, cache_dir=work / "features",
            training=TrainingConfig(seed=seed), force_norm=force_norm,
        ))
    report = evaluate(EvaluateRequest(model_path=members[0], head_path=head, data_path=paths["test"],
                                      ensemble_paths=members[1:], cache_dir=work / "features"))
    probe, *baselines = report["methods"]
    ensemble = max((m for m in baselines if m["name"].startswith("ensemble")), key=lambda m: m["auroc"])
    return {"seed": seed, "probe_auroc": probe["auroc"], "probe_ece": report["probe_calibration"]["ece"],
            "best_ensemble": ensemble["name"], "best_ensemble_auroc": ensemble["auroc"], "k_members": len(members)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "benchmarks" / "results")
    args = parser.parse_args(argv)
    paths = data.prepare(args.work)
    results = {}
    for name in args.backbones:
        rows = [score_seed(name, seed, paths, args.work) for seed in range(args.seeds)]
        without = score_seed(name, 0, paths, args.work, force_norm=False)
        aurocs = [row["probe_auroc"] for row in rows]
        results[name] = {"seeds": rows, "probe_auroc_min": min(aurocs), "probe_auroc_max": max(aurocs),
                         "seed0_without_force_norm": without, "best_ensemble_auroc": rows[0]["best_ensemble_auroc"]}
        print(f"{name}: PROBE {min(aurocs):.3f}-{max(aurocs):.3f} over {len(rows)} seeds "
              f"(seed 0 without the force norm: {without['probe_auroc']:.3f}), "
              f"best ensemble {rows[0]['best_ensemble_auroc']:.3f} ({rows[0]['best_ensemble']})", flush=True)
    out = args.out / "si_dft_head_seeds.json"
    write_json({"criterion": CRITERION, "command": "python benchmarks/si_dft/head_seeds.py", "backbones": results}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
