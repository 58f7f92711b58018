"""The CUDA path on a real GPU: `pair_style probe/mace ... device cuda`, the ML-IAP class on
device arrays (KOKKOS hands over GPU arrays) and the ASE calculator, each against the CPU.

Marked `gpu` (deselected by default) and skipped where torch sees no CUDA device. On a GPU
machine: `python -m pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (this torch sees none)"),
]

# Helpers and fixtures of the CPU tests, reused so both sides run the same cells and models.
from test_lammps_plugin import (  # noqa: E402
    MPIRUN, cu_structure, model_files, plugin, python_reference, run_lammps,
)
from test_mliap_unified import FakeMliapDataKokkos, cu_cell, first_record, fused_force_norm  # noqa: E402

from probe_md.lammps.mliap_unified import ProbeMliapUnified  # noqa: E402

ACROSS_DEVICES = 1e-9  # the float64 MACE: only the order of the GPU's sums differs
HEAD_ACROSS_DEVICES = 1e-6  # the fused head computes in float32 (measured on an H100: 5e-8)

__all__ = ["model_files", "plugin", "fused_force_norm"]  # fixtures used through pytest


def assert_same_lammps_step(gpu, gpu_arrays, cpu, cpu_arrays, what, tolerance, head_tolerance):
    """The MLIP's outputs agree to `tolerance`, the head's to `head_tolerance`."""
    np.testing.assert_allclose(gpu["pe"], cpu["pe"], rtol=0, atol=tolerance, err_msg=f"{what}: pe")
    np.testing.assert_allclose(gpu["pressure"], cpu["pressure"], rtol=1e-9, atol=1e-6, err_msg=f"{what}: pressure (bar)")
    for key in ("forces", "eatom"):
        np.testing.assert_allclose(gpu_arrays[key], cpu_arrays[key], rtol=0, atol=tolerance, err_msg=f"{what}: {key}")
    for key in ("probability", "logit"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=0, atol=head_tolerance, err_msg=f"{what}: {key}")
    np.testing.assert_allclose(gpu["predicted_error"], cpu["predicted_error"], rtol=head_tolerance,
                               err_msg=f"{what}: predicted error")
    np.testing.assert_allclose(gpu_arrays["importance"], cpu_arrays["importance"], rtol=0, atol=head_tolerance,
                               err_msg=f"{what}: importance")


@pytest.mark.parametrize("exchange", ["yes", "no"])
@pytest.mark.parametrize("kind", ["cubic", "triclinic"])
def test_plugin_on_cuda_equals_cpu_and_python(plugin, model_files, kind, exchange):
    """One step on the GPU = the same step on the CPU, and = mace + the head in Python."""
    atoms = cu_structure(kind)
    gpu, gpu_arrays = run_lammps(plugin, model_files, atoms, kind, exchange=exchange, device="cuda")
    cpu, cpu_arrays = run_lammps(plugin, model_files, atoms, kind, exchange=exchange, device="cpu")
    assert_same_lammps_step(gpu, gpu_arrays, cpu, cpu_arrays, f"{kind}, exchange {exchange}", ACROSS_DEVICES,
                            HEAD_ACROSS_DEVICES)
    reference = python_reference(model_files, atoms)
    np.testing.assert_allclose(gpu_arrays["forces"], reference["forces"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(gpu["probability"], reference["probability"], atol=1e-4)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install mpich)")
def test_two_ranks_sharing_one_gpu_equal_one_rank(plugin, model_files):
    """Two ranks on one GPU, halo exchange between layers: the step and 6 MD steps of one rank."""
    atoms = cu_structure("cubic").repeat((2, 1, 1))
    md = ["velocity all create 600 7 loop geom", "fix md all nve", "thermo 3", "run 6"]
    one, one_arrays = run_lammps(plugin, model_files, atoms, "split", nprocs=1, md=md, exchange="yes", device="cuda")
    two, two_arrays = run_lammps(plugin, model_files, atoms, "split", nprocs=2, md=md, exchange="yes", device="cuda")
    assert_same_lammps_step(two, two_arrays, one, one_arrays, "2 ranks vs 1 on the GPU", ACROSS_DEVICES,
                            ACROSS_DEVICES)
    assert one["md"][0] == two["md"][0] == 6
    np.testing.assert_allclose(two["md"][1], one["md"][1], rtol=0, atol=1e-8, err_msg="probability after MD")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install mpich)")
def test_nvt_series_on_cuda_follows_the_cpu(plugin, model_files):
    """60 NVT steps at 1200 K on 2 ranks: the GPU's reliability series and trajectory stay on
    the CPU's (differences only from summation order, far below what MD amplifies in 60 steps)."""
    atoms = cu_structure("cubic").repeat((2, 1, 1))
    series = {"setup": ["velocity all create 1200 5 loop geom", "fix md all nvt temp 1200 1200 0.1",
                        "neigh_modify every 1 delay 0 check yes"], "every": 3, "chunks": 20}
    gpu, _ = run_lammps(plugin, model_files, atoms, "nvt_gpu", nprocs=2, series=series, exchange="yes", device="cuda")
    cpu, _ = run_lammps(plugin, model_files, atoms, "nvt_gpu", nprocs=2, series=series, exchange="yes", device="cpu")
    np.testing.assert_allclose(np.array(gpu["series"]), np.array(cpu["series"]), rtol=0, atol=1e-7)
    np.testing.assert_allclose(gpu["final_positions"], cpu["final_positions"], rtol=0, atol=1e-7)


class GpuKokkosData(FakeMliapDataKokkos):
    """The KOKKOS coupling on a GPU: LAMMPS hands over device arrays (cupy there, read by torch
    through __cuda_array_interface__; CUDA tensors here), eatoms is a device view, and pair
    forces must come back through update_pair_forces_gpu as a contiguous CUDA float64 tensor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("elems", "pair_i", "pair_j", "rij"):
            setattr(self, name, torch.as_tensor(getattr(self, name), device="cuda"))
        self.jatoms = self.pair_j
        self.eatoms_device = torch.zeros(self.nlistatoms, dtype=torch.float64, device="cuda")
        self.gpu_force_calls = 0

    @property
    def eatoms(self):
        return self.eatoms_device

    def update_pair_forces(self, fij):
        raise AssertionError("on a GPU the pair forces go through update_pair_forces_gpu")

    def update_pair_forces_gpu(self, fij):
        assert fij.is_cuda, "update_pair_forces_gpu reads a device pointer"
        self.gpu_force_calls += 1
        super().update_pair_forces_gpu(fij)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "whole_graph"])
def test_mliap_class_on_device_arrays_equals_host(fused_force_norm, tmp_path, exchange):
    _, _, fused_path = fused_force_norm
    atoms = cu_cell(seed=3)
    host_model = ProbeMliapUnified(fused_path, every=1, out_dir=tmp_path / "host", comm=None, exchange=exchange)
    host = FakeMliapDataKokkos(atoms, host_model.element_types, cutoff=2 * host_model.rcutfac)
    host_model.compute_forces(host)
    gpu_model = ProbeMliapUnified(fused_path, every=1, out_dir=tmp_path / "gpu", comm=None, exchange=exchange)
    gpu = GpuKokkosData(atoms, gpu_model.element_types, cutoff=2 * gpu_model.rcutfac)
    gpu_model.compute_forces(gpu)
    assert gpu_model.device_.type == "cuda" and gpu.gpu_force_calls == 1
    assert gpu.exchanges == host.exchanges
    np.testing.assert_allclose(gpu.energy, host.energy, rtol=1e-12)
    np.testing.assert_allclose(gpu.eatoms_device.cpu().numpy(), host.eatoms_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gpu.owner_forces(), host.owner_forces(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(gpu.virial, host.virial, rtol=0, atol=1e-10)
    gpu_record, host_record = first_record(tmp_path / "gpu"), first_record(tmp_path / "host")
    assert gpu_record["logit"] == pytest.approx(host_record["logit"], abs=HEAD_ACROSS_DEVICES)
    assert gpu_record["probability"] == pytest.approx(host_record["probability"], abs=HEAD_ACROSS_DEVICES)


def test_ase_calculator_on_cuda_equals_cpu():
    """The embedded default on a 108-atom cell, on the GPU and on the CPU."""
    from ase.build import bulk

    from probe_md.ase import ProbeCalculator

    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=2)
    results = {}
    for device in ("cpu", "cuda"):
        probe = atoms.copy()
        probe.calc = ProbeCalculator(device=device)
        probe.get_forces()
        results[device] = probe.calc.results
    cpu, gpu = results["cpu"], results["cuda"]
    np.testing.assert_allclose(gpu["energy"], cpu["energy"], rtol=1e-12)
    np.testing.assert_allclose(gpu["forces"], cpu["forces"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(gpu["reliability"], cpu["reliability"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(gpu["predicted_error"], cpu["predicted_error"], rtol=1e-9)
    np.testing.assert_allclose(gpu["importance"], cpu["importance"], rtol=0, atol=1e-9)
