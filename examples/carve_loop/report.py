"""The carve loop's numbers: flagged checks of each run, atoms labelled, and the force error on
the hot spot of held-out frames, for the model before and after each retraining round.

    python examples/carve_loop/report.py WORK [--out WORK/carve_loop.json]

WORK is the folder `run.sh` filled: md0 (the first run), labelled_test.extxyz (its flagged
frames after the last training step, labelled whole with cu-snap), labelled_KIND.extxyz for
KIND in {carved, whole}, and per round KIND+EPOCHS (e.g. carved40): round_<round>/ and md1_<round>/.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import ase
import ase.io
import numpy as np

from probe_md.loop.carve import ARRAY_CORE
from probe_md.loop.retrain import model_errors
from probe_md.structures import ReferenceKeys

HOT_RADIUS = 2.0 * 3.615  # Å: hot_spot.in's r_hot (2 lattice constants) about the cell centre
KINDS = ("carved", "whole")


def hot_spot_only(atoms: ase.Atoms) -> ase.Atoms:
    """A copy whose trusted atoms (the error is taken over them) are those in the hot sphere."""
    marked = atoms.copy()
    centre = marked.cell.array.sum(axis=0) / 2
    marked.arrays[ARRAY_CORE] = np.linalg.norm(marked.positions - centre, axis=1) <= HOT_RADIUS
    return marked


def checks(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "reliability.jsonl").read_text().splitlines() if line.strip()]
    return {"checks": len(lines), "flagged": sum(bool(c["flagged"]) for c in lines),
            "probabilities": [round(c["probability"], 4) for c in lines]}


def labelled_atoms(path: Path) -> dict:
    pieces = ase.io.read(path, index=":")
    core = sum(int(p.arrays[ARRAY_CORE].sum()) if ARRAY_CORE in p.arrays else len(p) for p in pieces)
    return {"structures": len(pieces), "atoms": sum(len(p) for p in pieces), "trusted_atoms": core}


def test_errors(model: Path, frames: list[ase.Atoms]) -> dict:
    from probe_md.backbone.mace import MaceBackbone

    backbone = MaceBackbone.from_file(model)
    keys = ReferenceKeys()
    hot = model_errors(backbone, [hot_spot_only(a) for a in frames], keys)
    whole = model_errors(backbone, frames, keys)
    return {"hot_spot_force_rmse_mev_per_a": round(1000 * hot.force_rmse_ev_per_a, 2),
            "all_atoms_force_rmse_mev_per_a": round(1000 * whole.force_rmse_ev_per_a, 2)}


def report(work: Path) -> dict:
    from probe_md.defaults import default_model_path

    frames = ase.io.read(work / "labelled_test.extxyz", index=":")
    result = {"test_frames": {"steps": [int(a.info["step"]) for a in frames], "atoms": len(frames[0]),
                              "hot_spot_atoms": int(hot_spot_only(frames[0]).arrays[ARRAY_CORE].sum())},
              "md0": checks(work / "md0"), "before": test_errors(default_model_path(), frames)}
    for model in sorted(work.glob("round_*/model.pt")):
        name = model.parent.name.removeprefix("round_")
        kind = name.rstrip("0123456789")
        if kind not in KINDS:
            continue
        retrain = json.loads((work / f"round_{name}" / "retrain_report.json").read_text())
        result[name] = {"labelled": labelled_atoms(work / f"labelled_{kind}.extxyz"),
                        "epochs": retrain["mace_run_train"]["epochs"], "trainer": retrain["trainer"],
                        "fine_tune_seconds": retrain["wall_seconds"],
                        "after": test_errors(model, frames),
                        "valid_force_rmse_mev_per_a": {  # the default's validation set: in-domain forgetting
                            when: round(1000 * retrain[f"errors_{when}"]["valid"]["force_rmse_ev_per_a"], 2)
                            for when in ("before", "after")}}
        if (work / f"md1_{name}" / "reliability.jsonl").is_file():
            result[name]["md1"] = checks(work / f"md1_{name}")
    return result


def print_table(result: dict) -> None:
    before = result["before"]["hot_spot_force_rmse_mev_per_a"]
    print(f"md0: {result['md0']['flagged']}/{result['md0']['checks']} checks flagged; "
          f"hot-spot force RMSE on held-out frames {before} meV/Å")
    for name, r in result.items():
        if name.rstrip("0123456789") in KINDS:
            md1 = r.get("md1", {})
            print(f"{name}: labelled {r['labelled']['atoms']} atoms ({r['labelled']['trusted_atoms']} trusted) in "
                  f"{r['labelled']['structures']} structures; hot-spot RMSE {before} -> "
                  f"{r['after']['hot_spot_force_rmse_mev_per_a']} meV/Å, all atoms "
                  f"{result['before']['all_atoms_force_rmse_mev_per_a']} -> {r['after']['all_atoms_force_rmse_mev_per_a']}; "
                  f"rerun {md1.get('flagged', math.nan)}/{md1.get('checks', math.nan)} checks flagged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default WORK/carve_loop.json)")
    args = parser.parse_args()
    result = report(args.work)
    print_table(result)
    out = args.out or args.work / "carve_loop.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
