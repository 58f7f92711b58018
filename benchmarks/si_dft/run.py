"""PROBE on real DFT data (PyXtal-FF Si, VASP PBE) for several backbones: the full benchmark.

Usage (from the repository root; resumable: finished MLIPs, heads and reports are reused):
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/si_dft/run.py \
        [--backbones mace_small mace_large chgnet] [--members 4] [--skip-training] [--criterion energy-per-atom|force-rmse]

Steps per backbone: train K MLIPs with mace_run_train (seeds 0..K-1; CHGNet is the pretrained
universal model, not retrained) -> train PROBE on the `probe_train` split with member 0's
frozen features -> evaluate PROBE, ensemble disagreement (members 1..K-1 beside member 0)
and the feature-density baseline on the held-out `test` split. Data rules: see data.py.
Writes benchmarks/results/si_dft_<backbone>.json and the table benchmarks/results/si_dft.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402

import data  # noqa: E402
import mlips  # noqa: E402
from probe_md.backbone import load_backbone  # noqa: E402
from probe_md.evaluation import EvaluateRequest, evaluate, format_report, write_json  # noqa: E402
from probe_md.features import head_inputs, predict_dataset  # noqa: E402
from probe_md.pipeline import TrainRequest, train_probe  # noqa: E402
from probe_md.reliability_labels import DEFAULT_THRESHOLD_MULTIPLE  # noqa: E402
from probe_md.structures import read_structures  # noqa: E402
from probe_md.training import ProbeClassifier, load_head  # noqa: E402

CHGNET = "chgnet"
# CHGNet's "ensemble": the other MPtrj-PBE checkpoint shipped with the package (K=2).
CHGNET_MAIN, CHGNET_OTHER = "0.3.0", "0.2.0"
BACKBONES = (*mlips.CONFIGS, CHGNET)
DEFAULT_CRITERION = "energy-per-atom"  # many cells have zero DFT forces by symmetry (see data.py)
COMMAND = "nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/si_dft/run.py --backbones {name}"
CRITERIA = {  # criterion -> (file suffix, what the error is, unit scale to the table's unit)
    "energy-per-atom": ("", "energy error per atom (meV/atom)", 1000.0),
    "force-rmse": ("_force-rmse", "force RMSE (meV/Å)", 1000.0),
}


SPLITS = {"random": "", "shifted": "_shifted"}  # split -> file suffix (see data.shifted)


def report_path_for(out_dir: Path, name: str, criterion: str, split: str = "random") -> Path:
    return out_dir / f"si_dft_{name}{CRITERIA[criterion][0]}{SPLITS[split]}.json"


def chgnet_members(work_dir: Path) -> list[Path]:
    """The pretrained CHGNet checkpoints, re-saved in probe_md's CHGNet format."""
    from chgnet.model import CHGNet

    from probe_md.backbone.chgnet import save_chgnet_model

    paths = []
    for version in (CHGNET_MAIN, CHGNET_OTHER):
        path = work_dir / "mlips" / CHGNET / f"chgnet-{version}.pt"
        if not path.is_file():
            save_chgnet_model(CHGNet.load(model_name=version, use_device="cpu", verbose=False), path)
        paths.append(path)
    return paths


def mace_members(name: str, paths: dict, work_dir: Path, members: int, skip_training: bool):
    config = mlips.CONFIGS[name]
    found, seconds = [], []
    for seed in range(members):
        target = mlips.member_path(work_dir, config, seed)
        if skip_training and not target.is_file():
            continue
        result = mlips.train_member(config, paths, seed, work_dir)
        print(f"{name} seed {seed}: {result['train_seconds']:.0f} s", flush=True)
        found.append(target)
        seconds.append(result["train_seconds"])
    return found, seconds


def _is_current(report_path: Path, k_members: int, criterion: str) -> bool:
    report = json.loads(report_path.read_text())
    return (report.get("k_members") == k_members and report.get("criterion") == criterion
            and "probe_flagged_fraction" in report
            and report.get("head_reads_force_norm", False) == TrainRequest.force_norm)


def probe_flagged_fraction(backbone, head_path: Path, data_path: Path, cache_dir: Path) -> float:
    """Share of the structures PROBE calls unreliable (p < 0.5); features come from the cache."""
    head, _ = load_head(head_path)
    structures = read_structures(data_path)
    features = head_inputs(predict_dataset(backbone, structures, cache_dir, progress=False), head.reads_force_norm)
    return float((ProbeClassifier.from_head(head).predict_proba(features)[:, 1] < 0.5).mean())


def run_backbone(name: str, paths: dict, args) -> dict:
    work_dir, out_dir = args.work, args.out
    report_path = report_path_for(out_dir, name, args.criterion, args.split)
    if CHGNET == name:
        members, train_seconds = chgnet_members(work_dir), []
        mlip = {"model": f"CHGNet {CHGNET_MAIN} pretrained (MPtrj, PBE); not retrained",
                "ensemble": f"CHGNet {CHGNET_MAIN} + {CHGNET_OTHER} (K=2)"}
    else:
        members, train_seconds = mace_members(name, paths, work_dir, args.members, args.skip_training)
        config = mlips.CONFIGS[name]
        mlip = {"model": "MACE via mace_run_train", "config": {
            k: getattr(config, k) for k in ("hidden_irreps", "r_max", "num_interactions",
                                            "correlation", "max_ell", "max_num_epochs")},
            "cli": " ".join(["mace_run_train", *config.cli_args(paths, 0, Path("OUT"))])}
    if not members:
        raise SystemExit(f"{name}: no trained members (run without --skip-training)")
    if report_path.is_file() and _is_current(report_path, len(members), args.criterion):
        print(f"{name}: {report_path} is up to date")
        return json.loads(report_path.read_text())
    backbone = load_backbone(members[0])
    n_parameters = sum(p.numel() for p in backbone.model.parameters())
    cache_dir = work_dir / "features"
    # heads that read the force norm get their own files: the older ones stay as they were
    force_norm = "-force-norm" if TrainRequest.force_norm else ""
    head_path = work_dir / "heads" / f"{name}-{args.criterion}{SPLITS[args.split]}{force_norm}.pt"
    probe_timing = head_path.with_suffix(".seconds")
    if not head_path.is_file():
        start = time.perf_counter()
        train_probe(TrainRequest(
            model_path=members[0], data_paths=[paths["probe_train"]], output_path=head_path,
            in_domain_path=paths["mlip_valid"], criterion=args.criterion, cache_dir=cache_dir,
        ))
        probe_timing.write_text(f"{time.perf_counter() - start:.1f}\n")
    probe_seconds = float(probe_timing.read_text()) if probe_timing.is_file() else float("nan")
    start = time.perf_counter()
    report = evaluate(EvaluateRequest(
        model_path=members[0], head_path=head_path, data_path=paths["test"],
        ensemble_paths=members[1:], cache_dir=cache_dir,
        plots_dir=out_dir / "si_dft_plots" / report_path.stem.removeprefix("si_dft_"),
    ))
    report.update({
        "probe_flagged_fraction": probe_flagged_fraction(backbone, head_path, paths["test"], cache_dir),
        "backbone": name,
        "adapter": type(backbone).__name__,
        "feature_dim": backbone.feature_dim,
        "cutoff": backbone.cutoff,
        "num_layers": backbone.num_layers,
        "n_parameters": n_parameters,
        "k_members": len(members),
        "head_reads_force_norm": TrainRequest.force_norm,
        "mlip": mlip,
        "data_summary": json.loads((work_dir / "data" / "summary.json").read_text()),
        "wall_seconds": {
            "mlip_training_per_member": train_seconds,
            "probe_training_incl_features": probe_seconds,
            "evaluation_incl_features": time.perf_counter() - start,
        },
        "command": COMMAND.format(name=name) + (
            "" if args.criterion == DEFAULT_CRITERION else f" --criterion {args.criterion}") + (
            "" if args.split == "random" else f" --split {args.split}"),
        "split": args.split,
    })
    write_json(report, report_path)
    print(format_report(report), flush=True)
    return report


def _flagged(report: dict) -> str:
    fraction = report.get("probe_flagged_fraction")
    return "-" if fraction is None else f"{fraction * report['n_structures']:.0f}/{report['n_structures']}"


def _criterion_section(reports: list[dict], criterion: str, split: str) -> list[str]:
    _, error_name, scale = CRITERIA[criterion]
    title = f"## Criterion: {criterion}, random split"
    if split == "shifted":
        title = (f"## Criterion: {criterion}, shifted split: PROBE trained on cells below "
                 f"{data.SHIFT_EV_PER_ATOM} eV/atom excess, tested only on cells above it")
    lines = [
        title,
        "",
        f"A structure is unreliable when the MLIP's {error_name.split(' (')[0]} exceeds "
        f"{DEFAULT_THRESHOLD_MULTIPLE:g} × the RMS error on the MLIP validation cells (per backbone).",
        "",
        f"| backbone | params | K | test median {error_name} | threshold | unreliable "
        "| PROBE flags (p < 0.5) | method | AUROC | AUPRC | AURC | Spearman(score, error) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        head = (f"| {r['backbone']} ({r['adapter']}, {r['feature_dim']}-d) | {r['n_parameters']:,} "
                f"| {r['k_members']} | {scale * r['mlip_error']['median']:.0f} "
                f"| {scale * r['threshold']:.0f} | {r['unreliable']}/{r['n_structures']} "
                f"| {_flagged(r)} ")
        for i, m in enumerate(r["methods"]):
            prefix = head if i == 0 else "| | | | | | | "
            lines.append(f"{prefix}| {m['name']} | {m['auroc']:.3f} | {m['auprc']:.3f} "
                         f"| {m['aurc']:.3f} | {m['spearman_score_vs_error']:.3f} |")
    reading = [r["backbone"] for r in reports if r.get("head_reads_force_norm")]
    if reading and len(reading) == len(reports):
        lines += ["", "Every PROBE head here also reads the MLIP's per-atom force norm."]
    elif reading:
        lines += ["", f"PROBE heads that also read the MLIP's per-atom force norm: {', '.join(reading)}; "
                  "the other rows are heads on the backbone's features alone (measured before it)."]
    lines += [
        "",
        "Expressiveness (same data, same rules): does a stronger backbone give a stronger signal?",
        "",
        f"| backbone | params | feature dim | in-domain RMS {error_name} | PROBE AUROC | PROBE AURC "
        "| best baseline (by AUROC) | its AUROC | its AURC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        probe, *baselines = r["methods"]
        best = max(baselines, key=lambda m: m["auroc"]) if baselines else None
        best_text = f"{best['name']} | {best['auroc']:.3f} | {best['aurc']:.3f}" if best else "- | - | -"
        in_domain = scale * r["threshold"] / DEFAULT_THRESHOLD_MULTIPLE
        lines.append(f"| {r['backbone']} | {r['n_parameters']:,} | {r['feature_dim']} | {in_domain:.0f} "
                     f"| {probe['auroc']:.3f} | {probe['aurc']:.3f} | {best_text} |")
    return lines + [""]


def write_markdown(out_dir: Path) -> Path:
    """The tables of every si_dft_<backbone>[_<criterion>][_<split>].json present, in study order."""
    by_criterion = {
        (criterion, split): [json.loads(p.read_text()) for name in BACKBONES
                             if (p := report_path_for(out_dir, name, criterion, split)).is_file()]
        for split in SPLITS for criterion in CRITERIA
    }
    everything = [r for reports in by_criterion.values() for r in reports]
    summary = everything[0]["data_summary"] if everything else {}
    rules, dropped = summary.get("rules", {}), summary.get("dropped", {})
    lines = [
        "# PROBE on real DFT data: PyXtal-FF silicon (VASP PBE)",
        "",
        f"Data: {summary.get('n_source')} Si cells (1-16 atoms) from the `pyxtal_ff` sdist; "
        f"kept {summary.get('kept')} after dropping {dropped.get('duplicate')} duplicates, "
        f"{dropped.get('high_energy')} cells more than {rules.get('max_excess_ev_per_atom')} eV/atom "
        f"above the lowest one and {dropped.get('compressed')} with an interatomic distance "
        f"< {rules.get('min_distance_a')} Å. MLIPs train on "
        f"{rules.get('n_mlip_train')} random cells below {rules.get('low_energy_ev_per_atom')} "
        f"eV/atom excess ({rules.get('n_mlip_valid')} more validate and set the threshold); "
        "every other cell is split 50/50 (seed "
        f"{rules.get('split_seed')}) into PROBE training and the held-out test set scored here.",
        "",
        "Scores rank held-out structures: AUROC/AUPRC for finding unreliable ones (higher is "
        "better), AURC = area under the risk-coverage curve (lower is better). PROBE and the "
        "density baseline use member 0's features; the ensemble uses members 0..K-1.",
        "",
    ]
    for (criterion, split), reports in by_criterion.items():
        if reports:
            lines += _criterion_section(reports, criterion, split)
    small, large, long = mlips.SMALL, mlips.LARGE, mlips.LARGE_LONG
    lines += [
        "Notes:",
        "",
        "- Second architecture: CHGNet (atom + bond + angle graph, 64-d atom features before "
        "its last convolution) through `probe_md/backbone/chgnet.py`; the head, training, "
        "evaluation and density code are the same calls for every backbone. BOTNet is not "
        "available: mace-torch 0.3.16 refuses `--model=BOTNet` (\"BOTNet is deprecated\").",
        f"- CHGNet is the pretrained universal model {CHGNET_MAIN} used zero-shot (never trained "
        f"on this data); its \"ensemble\" is the two MPtrj checkpoints shipped with chgnet "
        f"({CHGNET_MAIN} + {CHGNET_OTHER}, K=2), a weak ensemble by construction.",
        f"- MACE sizes: small = {small.hidden_irreps}, r_max {small.r_max} Å, "
        f"{small.max_num_epochs} epochs; large = {large.hidden_irreps}, r_max {large.r_max} Å, "
        f"only {large.max_num_epochs} epochs (CPU budget), so the larger model is the less "
        f"trained one; {long.name} is the large model on the small one's schedule "
        f"({long.max_num_epochs} epochs). Compare in-domain errors before reading size effects.",
        "- Random split: PROBE's training and test cells are random halves of one pool, so it "
        "measures ranking on unseen structures of the same distribution. Shifted split: PROBE "
        f"never saw a cell above {data.SHIFT_EV_PER_ATOM} eV/atom excess. For MACE almost every "
        "such cell is unreliable, so AUROC there rests on a handful of reliable cells (noise); "
        "compare the 'PROBE flags' column (cells with p < 0.5) with the 'unreliable' column.",
        "- Wall times depend on what else ran on the shared machine; a step whose features "
        "were already cached by an earlier run shows only the cache read.",
        "- Each backbone is judged on its own errors (its own labels and threshold), so the "
        "AUROC columns compare how well each backbone's features foresee its own failures.",
        "",
        "Wall times (2 shared CPU cores, nice 19, 1 thread) and commands:",
        "",
    ]
    for r in everything:
        w = r["wall_seconds"]
        mlip = w["mlip_training_per_member"]
        mlip_text = f"MLIP training {', '.join(f'{s:.0f}' for s in mlip)} s per member; " if mlip else ""
        lines.append(f"- {r['backbone']} ({r['criterion']}, {r.get('split', 'random')} split): "
                     f"{mlip_text}PROBE training "
                     f"{w['probe_training_incl_features']:.0f} s, evaluation "
                     f"{w['evaluation_incl_features']:.0f} s (both incl. feature extraction). "
                     f"`{r['command']}`")
    path = out_dir / "si_dft.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--members", type=int, default=4, help="K MLIPs per MACE backbone")
    parser.add_argument("--skip-training", action="store_true",
                        help="use only the MLIPs already trained (no mace_run_train)")
    parser.add_argument("--criterion", choices=CRITERIA, default=DEFAULT_CRITERION)
    parser.add_argument("--split", choices=SPLITS, default="random",
                        help="shifted: PROBE trains below 1 eV/atom excess, is tested above it")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("probe_md").setLevel(logging.INFO)  # each head's threshold and training summary
    torch.set_num_threads(1)
    paths = data.prepare(args.work)
    if args.split == "shifted":
        paths = data.shifted(paths)
    for name in args.backbones:
        run_backbone(name, paths, args)
    print(f"wrote {write_markdown(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
