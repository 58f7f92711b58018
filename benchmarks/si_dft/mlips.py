"""Train the K-member MLIP ensembles with mace-torch's own CLI, then convert each to TorchScript.

Each backbone size is one `MlipConfig`; member k uses seed k. Training runs under
`nice -n 19` with one thread (the machine is shared). A member whose TorchScript file
exists is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MlipConfig:
    """One backbone of the expressiveness study (mace_run_train hyper-parameters)."""

    name: str
    hidden_irreps: str
    r_max: float
    num_interactions: int
    correlation: int
    max_ell: int
    max_num_epochs: int
    batch_size: int = 10
    model: str = "MACE"
    extra: tuple[str, ...] = ()

    def cli_args(self, data: dict[str, Path], seed: int, out_dir: Path) -> list[str]:
        return [
            f"--name={self.name}-seed{seed}",
            f"--seed={seed}",
            f"--model={self.model}",
            f"--hidden_irreps={self.hidden_irreps}",
            f"--r_max={self.r_max}",
            f"--num_interactions={self.num_interactions}",
            f"--correlation={self.correlation}",
            f"--max_ell={self.max_ell}",
            "--MLP_irreps=16x0e",
            "--num_radial_basis=8",
            f"--train_file={data['mlip_train']}",
            f"--valid_file={data['mlip_valid']}",
            "--energy_key=REF_energy",
            "--forces_key=REF_forces",
            "--E0s=average",
            "--loss=weighted",
            "--energy_weight=10.0",
            "--forces_weight=10.0",
            f"--batch_size={self.batch_size}",
            f"--valid_batch_size={self.batch_size * 2}",
            f"--max_num_epochs={self.max_num_epochs}",
            "--lr=0.01",
            "--scheduler_patience=3",
            "--patience=20",
            "--eval_interval=1",
            "--ema",
            "--ema_decay=0.99",
            "--default_dtype=float32",
            "--device=cpu",
            "--num_workers=0",
            "--error_table=PerAtomRMSE",
            f"--model_dir={out_dir}",
            f"--checkpoints_dir={out_dir / 'checkpoints'}",
            f"--results_dir={out_dir / 'results'}",
            f"--log_dir={out_dir / 'logs'}",
            *self.extra,
        ]


# Small: invariant-only messages (16 scalar channels, L=0), short cutoff.
# Large: 32 channels with L=1 equivariant features, longer cutoff (fewer epochs: CPU budget).
SMALL = MlipConfig("mace_small", "16x0e", 4.5, 2, 2, 2, max_num_epochs=40)
LARGE = MlipConfig("mace_large", "32x0e+32x1o", 5.0, 2, 2, 2, max_num_epochs=10)
# The large model on the small one's schedule: separates "bigger" from "trained longer".
LARGE_LONG = MlipConfig("mace_large_long", "32x0e+32x1o", 5.0, 2, 2, 2, max_num_epochs=40)
CONFIGS = {c.name: c for c in (SMALL, LARGE, LARGE_LONG)}


def member_path(work_dir: Path, config: MlipConfig, seed: int) -> Path:
    return work_dir / "mlips" / config.name / f"seed{seed}.pt"


def train_member(config: MlipConfig, data: dict[str, Path], seed: int, work_dir: Path) -> dict:
    """Train one member (skipped when its TorchScript exists); returns wall time and size."""
    target = member_path(work_dir, config, seed)
    timing_file = target.with_suffix(".seconds")
    if target.is_file():
        seconds = float(timing_file.read_text()) if timing_file.is_file() else float("nan")
        return {"path": str(target), "train_seconds": seconds, "skipped": True}
    out_dir = target.parent / f"seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["nice", "-n", "19", sys.executable, "-m", "mace.cli.run_train",
               *config.cli_args(data, seed, out_dir)]
    start = time.perf_counter()
    with open(out_dir / "train.log", "w") as log:
        subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    convert(out_dir / f"{config.name}-seed{seed}.model", target)
    timing_file.write_text(f"{seconds:.1f}\n")
    return {"path": str(target), "train_seconds": seconds, "skipped": False}


def convert(pickle_path: Path, target: Path) -> None:
    """mace_run_train's pickle -> self-describing TorchScript (we trained it: trusted)."""
    import torch

    from probe_md.backbone.mace import save_mace_model

    torch.set_num_threads(1)
    model = torch.load(pickle_path, map_location="cpu", weights_only=False)
    save_mace_model(model, target)
