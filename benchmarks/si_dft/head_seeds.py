"""Si DFT, force-RMSE criterion: PROBE's head over seeds, and what each of its inputs adds.

For each backbone, heads with seeds 0..S-1 are trained as run.py trains its head (the defaults
of `probe-md train --seed S`: threshold from the MLIP validation cells) on the same
`probe_train` split and scored on the same test cells against the same ensemble, in three
variants (issue #11, item 5):
  default              reads the MLIP's force norm, per-atom force-error target on the values
  no force norm        `--no-force-norm`
  no per-atom target   atom_error_loss_weight = 0
Needs the MLIPs of run.py (`--criterion force-rmse` once per backbone first); seed 0 of the
default variant is run.py's head file.

Usage: nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/si_dft/head_seeds.py [--backbones ...] [--seeds 4]
Writes benchmarks/results/si_dft_head_seeds.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Variant:
    force_norm: bool = True
    atom_error_loss_weight: float = TrainingConfig.atom_error_loss_weight
    file_tag: str = ""  # beside run.py's head name


VARIANTS = {
    "default": Variant(),
    "no force norm": Variant(force_norm=False, file_tag="-no"),
    "no per-atom target": Variant(atom_error_loss_weight=0.0, file_tag="-no-atom-target"),
}


def head_path(work: Path, name: str, seed: int, variant: Variant) -> Path:
    """Seed 0 of the default variant is run.py's head file; the others sit beside it."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    if variant.force_norm:
        return work / "heads" / f"{name}-{CRITERION}-force-norm{variant.file_tag}{suffix}.pt"
    return work / "heads" / f"{name}-{CRITERION}{variant.file_tag}-force-norm{suffix}.pt"


def score_seed(name: str, seed: int, paths: dict, work: Path, variant: Variant) -> dict:
    members = members_of(name, work)
    if not members:
        raise SystemExit(f"{name}: no MLIPs in {work / 'mlips'} (run run.py --backbones {name} --criterion {CRITERION} first)")
    head = head_path(work, name, seed, variant)
    if not head.is_file():
        train_probe(TrainRequest(
            model_path=members[0], data_paths=[paths["probe_train"]], output_path=head,
            in_domain_path=paths["mlip_valid"], criterion=CRITERION, cache_dir=work / "features",
            training=TrainingConfig(seed=seed, atom_error_loss_weight=variant.atom_error_loss_weight),
            force_norm=variant.force_norm,
        ))
    report = evaluate(EvaluateRequest(model_path=members[0], head_path=head, data_path=paths["test"],
                                      ensemble_paths=members[1:], cache_dir=work / "features"))
    probe, *baselines = report["methods"]
    ensemble = max((m for m in baselines if m["name"].startswith("ensemble")), key=lambda m: m["auroc"])
    return {"seed": seed, "probe_auroc": probe["auroc"], "probe_ece": report["probe_calibration"]["ece"],
            "best_ensemble": ensemble["name"], "best_ensemble_auroc": ensemble["auroc"], "k_members": len(members)}


def summary(rows: list[dict]) -> dict:
    aurocs = [row["probe_auroc"] for row in rows]
    return {"seeds": rows, "probe_auroc_min": min(aurocs), "probe_auroc_max": max(aurocs),
            "probe_auroc_mean": sum(aurocs) / len(aurocs)}


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
        variants = {label: summary([score_seed(name, seed, paths, args.work, variant) for seed in range(args.seeds)])
                    for label, variant in VARIANTS.items()}
        ensemble = variants["default"]["seeds"][0]
        results[name] = {"variants": variants, "best_ensemble": ensemble["best_ensemble"],
                         "best_ensemble_auroc": ensemble["best_ensemble_auroc"]}
        spans = "; ".join(f"{label} {v['probe_auroc_min']:.3f}-{v['probe_auroc_max']:.3f} (mean {v['probe_auroc_mean']:.3f})"
                          for label, v in variants.items())
        print(f"{name}: PROBE over {args.seeds} seeds: {spans}; best ensemble {ensemble['best_ensemble_auroc']:.3f}", flush=True)
    out = args.out / "si_dft_head_seeds.json"
    write_json({"criterion": CRITERION, "command": "python benchmarks/si_dft/head_seeds.py", "backbones": results}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
