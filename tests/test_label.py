"""probe_md.loop.label: EMT labels, resume after interruption, failures reported, CLI."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from probe_md.cli.main import main
from probe_md.loop.collect import structure_key
from probe_md.loop.label import (
    INFO_FRAME_KEY,
    LabelFiles,
    calculator_factory,
    label_frames,
    parse_calc_kwargs,
)

N_FRAMES = 6


def tiny_cells(n: int = N_FRAMES):
    frames = []
    for seed in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
        atoms.rattle(0.05, seed=seed)
        atoms.info["step"] = 10 * seed
        atoms.info["run"] = "run_a"
        frames.append(atoms)
    return frames


class CountingEMT(EMT):
    """EMT that records which frames it finished and can fail on a chosen one."""

    finished: list[str] = []

    def __init__(self, interrupt_after: int | None = None, fail_on_step: int | None = None):
        super().__init__()
        self.interrupt_after = interrupt_after
        self.fail_on_step = fail_on_step

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if self.interrupt_after is not None and len(CountingEMT.finished) >= self.interrupt_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-frame
        if self.fail_on_step is not None and atoms.info.get("step") == self.fail_on_step:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)
        key = structure_key(atoms)
        if key not in CountingEMT.finished[-1:]:  # energy, forces, stress of one frame: one entry
            CountingEMT.finished.append(key)


@pytest.fixture(autouse=True)
def reset_counter():
    CountingEMT.finished = []


def emt_reference(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def test_labels_match_emt_and_follow_mace_keys(tmp_path):
    frames = tiny_cells(3)
    result = label_frames(frames, EMT, tmp_path / "out.extxyz", "emt", progress=False)
    assert result.written == 3 and result.labelled_now == 3 and not result.failures
    labelled = ase.io.read(tmp_path / "out.extxyz", ":")
    for original, atoms in zip(frames, labelled):
        energy, forces = emt_reference(original)
        assert atoms.info["REF_energy"] == pytest.approx(energy, abs=1e-6)
        np.testing.assert_allclose(atoms.arrays["REF_forces"], forces, atol=1e-6)
        assert np.shape(atoms.info["REF_stress"]) == (6,)
        assert atoms.info["step"] == original.info["step"] and atoms.info["run"] == "run_a"
        assert atoms.info[INFO_FRAME_KEY] == structure_key(original)
    files = LabelFiles(tmp_path / "out.extxyz")
    assert not files.partial.exists() and not files.failures.exists()


def test_interrupted_run_resumes_without_relabelling_or_losing_frames(tmp_path):
    frames = tiny_cells()
    output = tmp_path / "out.extxyz"
    k = 2
    with pytest.raises(KeyboardInterrupt):
        label_frames(frames, lambda: CountingEMT(interrupt_after=k), output, "emt", progress=False)
    assert not output.exists()
    assert len(ase.io.read(LabelFiles(output).partial, ":")) == k

    # A torn half frame from a crash during the write must not break the resume.
    with open(LabelFiles(output).partial, "a") as handle:
        handle.write("4\nLattice=\"3.61 0 0 0 3.61 0 0 0 3.61\" Properties=species:S:1:pos:R:3\nCu 0.0 0")

    result = label_frames(frames, CountingEMT, output, "emt", progress=False)
    assert result.already_done == k and result.labelled_now == N_FRAMES - k
    assert sorted(CountingEMT.finished) == sorted(structure_key(a) for a in frames)  # each exactly once
    labelled = ase.io.read(output, ":")
    assert [a.info["step"] for a in labelled] == [a.info["step"] for a in frames]  # input order
    for original, atoms in zip(frames, labelled):
        energy, _ = emt_reference(original)
        assert atoms.info["REF_energy"] == pytest.approx(energy, abs=1e-6)
    assert not LabelFiles(output).partial.exists()

    # Rerunning a finished job labels nothing.
    again = label_frames(frames, CountingEMT, output, "emt", progress=False)
    assert again.labelled_now == 0 and again.written == N_FRAMES
    assert len(CountingEMT.finished) == N_FRAMES


def test_failing_frame_is_reported_and_retried(tmp_path):
    frames = tiny_cells()
    output = tmp_path / "out.extxyz"
    result = label_frames(frames, lambda: CountingEMT(fail_on_step=30), output, "emt", progress=False)
    assert result.written == N_FRAMES - 1
    assert [(r["index"], r["step"]) for r in result.failures] == [(3, 30)]
    assert "SCF did not converge" in result.failures[0]["error"]
    assert "1 FAILED" in result.summary()
    records = [json.loads(line) for line in LabelFiles(output).failures.read_text().splitlines()]
    assert records == result.failures
    assert LabelFiles(output).partial.exists()  # kept so that a rerun retries only the failure

    retry = label_frames(frames, CountingEMT, output, "emt", progress=False)
    assert retry.labelled_now == 1 and retry.written == N_FRAMES and not retry.failures
    assert len(CountingEMT.finished) == N_FRAMES
    assert not LabelFiles(output).failures.exists()


def test_calculator_specs():
    assert isinstance(calculator_factory("ase.calculators.emt:EMT")(), EMT)
    assert parse_calc_kwargs('{"asap_cutoff": true}') == {"asap_cutoff": True}
    with pytest.raises(ValueError, match="neither a named reference"):
        calculator_factory("emt")
    with pytest.raises(ValueError, match="has no class Nope"):
        calculator_factory("ase.calculators.emt:Nope")
    with pytest.raises(ValueError, match="cannot import"):
        calculator_factory("no_such_module_xyz:Calc")
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_calc_kwargs("[1, 2]")


def test_label_cli(tmp_path, capsys):
    pool = tmp_path / "pool.extxyz"
    ase.io.write(pool, tiny_cells(3))
    output = tmp_path / "labelled.extxyz"
    argv = ["label", str(pool), "-o", str(output), "--calculator", "ase.calculators.emt:EMT", "--no-progress"]
    assert main(argv) == 0
    assert "3 of 3 frames labelled" in capsys.readouterr().out
    assert len(ase.io.read(output, ":")) == 3
    assert main(argv[:-1] + ["--calc-kwargs", "{bad"]) == 2
    assert "--calc-kwargs is not valid JSON" in capsys.readouterr().err


def test_unwritable_output_is_refused_before_any_frame_is_labelled(tmp_path):
    def must_not_label():
        raise AssertionError("a calculator was made before the output path was checked")

    (tmp_path / "afile").write_text("x")  # a path under a regular file is unwritable even for root
    output = tmp_path / "afile" / "labelled.extxyz"
    with pytest.raises(ValueError, match=r"cannot write labelled output file .*afile is a file, not a folder"):
        label_frames(tiny_cells(2), must_not_label, output, progress=False)
