"""Fine-tune MACE on old + newly labelled data, convert it, refit the PROBE head, export, report.

Training is mace-torch's own `mace_run_train` (run as a subprocess with
`--foundation_model=<pickled .model>`), not a trainer of ours. It fine-tunes python models:
either the pickled `<name>.model` the original training wrote, or — for probe-md's TorchScript
files with an architecture config (probe_md.backbone.mace_rebuild) — the python model rebuilt
from the TorchScript weights (`foundation.model` in out_dir). The retrained pickled model is
kept as `retrained.model`, so the next loop iteration fine-tunes from it.

Outputs in `out_dir`:
  data/train.extxyz, data/new_holdout.extxyz   what MACE was trained on / held out for the report
  foundation.model                             a TorchScript foundation, rebuilt (only then)
  mace/                                        mace_run_train's work folder (logs, checkpoints)
  retrained.model                              pickled mace-torch model (the next --foundation-model)
  model.pt, model.pt.mace_config.json          TorchScript backbone (probe_md.backbone.mace format)
  head.pt, fused.pt                            refitted PROBE head (recalibrated with `probe-md calibrate`
                                               on calibration_data, else on the held-out new frames)
                                               and the fused LAMMPS model
  head_before_calibration.pt                   the refitted head before that recalibration
  retrain_report.json                          before/after errors and the file list

mace_run_train runs with --restart_latest: rerunning into the same `out_dir` after an
interruption resumes from its last checkpoint, so give every round its own `out_dir`.

Carved structures (`collect --carve`: `arrays['probe_core']`) are fitted on their core atoms'
forces only. mace_run_train cannot weigh atoms, so a round with carved structures fine-tunes
with probe_md.loop.core_finetune (mace's model, data and loss terms, per-atom force weights:
buffer atoms 0). Their energies and stresses are skipped (mace's `config_energy_weight` /
`config_stress_weight` 0) unless `carved_energies` says they are meaningful; errors on them
are reported on core atoms' forces.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Final, Sequence

import ase
import ase.io
import numpy as np

from probe_md.backbone.base import Backbone
from probe_md.io_utils import atomic_output, atomic_write_bytes, check_output_path
from probe_md.loop.carve import ARRAY_CORE
from probe_md.loop.collect import write_extxyz_atomic
from probe_md.structures import ReferenceKeys, read_structures

REPORT_FILE: Final[str] = "retrain_report.json"
RETRAINED_PICKLE: Final[str] = "retrained.model"
MACE_RUN_NAME: Final[str] = "retrained"
FOUNDATION_PICKLE: Final[str] = "foundation.model"  # a TorchScript foundation, rebuilt for mace_run_train
# RetrainConfig fields copied into the report's "mace_run_train" section
REPORTED_SETTINGS: Final[tuple[str, ...]] = (
    "epochs", "lr", "batch_size", "ema_decay", "energy_weight", "forces_weight", "stress_weight", "new_frame_weight",
    "carved_energies",
)
# mace's per-structure property weights (config_from_atoms reads info['config_<name>_weight'])
INFO_ENERGY_WEIGHT: Final[str] = "config_energy_weight"  # float, 0 = skip this structure's energy
INFO_STRESS_WEIGHT: Final[str] = "config_stress_weight"  # float, 0 = skip this structure's stress

logger = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    """Inputs and hyper-parameters of one retraining round."""

    foundation_model: Path  # pickled mace-torch .model (trusted: unpickling runs code), or .pt + config
    new_data: Sequence[Path]  # newly labelled frames (probe-md label output)
    out_dir: Path
    old_data: Sequence[Path] = ()  # the MLIP's training data, replayed against forgetting
    valid_data: Path | None = None  # MLIP validation data (also sets the head's threshold)
    head_data: Sequence[Path] = ()  # PROBE head training pool; the new frames are added to it
    # Labelled frames of the regime the model will run in, picked regardless of the monitor
    # (e.g. every k-th frame of a run): the refitted head is recalibrated on them instead of on
    # the held-out new frames, which were picked because the monitor flagged them.
    calibration_data: Sequence[Path] = ()
    before_model: Path | None = None  # TorchScript of the model in use (default: the foundation)
    max_old_frames: int | None = None  # random subset of old_data, for speed
    # Defaults: the round the README reports working on the embedded Cu default ("Closing the
    # loop"); 5 epochs, lr 3e-4 and energy weight 1 left the new-frame error 5x over threshold.
    holdout_fraction: float = 0.25  # new frames kept out of training to report an honest error
    new_valid_fraction: float = 0.15  # new frames added to mace's validation set (its best-epoch pick)
    epochs: int = 40
    batch_size: int = 5
    lr: float = 2e-3
    energy_weight: float = 1000.0  # mace_run_train's loss weights: the embedded default's last stage;
    forces_weight: float = 100.0  # other weights make the fine-tune trade its energies for forces
    new_frame_weight: float = 5.0  # loss weight of the new frames relative to replayed old ones
    ema_decay: float | None = 0.99  # exponential moving average of the weights (None: off)
    seed: int = 0
    device: str = "cpu"
    before_head: Path | None = None  # the head in use: its criterion and threshold are kept
    head_threshold: float | None = None  # None: the before head's, else 2 x RMS error on valid_data
    head_max_epochs: int | None = None
    stress_weight: float = 1000.0  # > 0: also fit keys.stress (mace --loss=stress), as the Cu default was
    export: bool = True
    extra_mace_args: Sequence[str] = ()  # passed to mace_run_train verbatim (they win)
    carved_energies: bool = False  # carved structures' reference energies/stresses are meaningful: fit them
    keys: ReferenceKeys = field(default_factory=ReferenceKeys)

    def __post_init__(self) -> None:
        """Refuse values no round can use, naming the field (the CLI names its flag instead)."""
        if not self.new_data:
            raise ConfigFieldError("new_data", "is empty: give the newly labelled frames")
        for name, (accepts, requirement) in _FIELD_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not accepts(value):
                raise ConfigFieldError(name, f"must be {requirement}, got {value}")


class ConfigFieldError(ValueError):
    """A RetrainConfig field holds a value it cannot take; `field` names it."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name} {problem}")
        self.field = field_name
        self.problem = problem


# field -> (test its value passes, the requirement in words); None passes where a field allows it
_FIELD_LIMITS: Final[dict[str, tuple[Callable[[float], bool], str]]] = {
    "holdout_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "new_valid_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "energy_weight": (lambda v: v >= 0, ">= 0"),
    "forces_weight": (lambda v: v >= 0, ">= 0"),
    "stress_weight": (lambda v: v >= 0, ">= 0"),
    "new_frame_weight": (lambda v: v > 0, "> 0"),
    "ema_decay": (lambda v: 0 < v < 1, "in (0, 1)"),
    "max_old_frames": (lambda v: v >= 0, ">= 0"),
    "head_threshold": (lambda v: v > 0, "> 0"),
    "head_max_epochs": (lambda v: v >= 1, ">= 1"),
}


# ----------------------------------------------------------------------------- locating inputs
def default_foundation_model() -> Path:
    """The embedded Cu MACE (TorchScript with its architecture config: rebuilt for fine-tuning)."""
    from probe_md import defaults

    return defaults.default_model_path()


def trainable_foundation(foundation: Path, out_dir: Path) -> Path:
    """A pickled model mace_run_train can fine-tune: `foundation` itself when it is one, else
    the python model rebuilt from a TorchScript file and its config, saved by us in out_dir."""
    from probe_md.backbone.mace import is_torchscript_archive

    if not is_torchscript_archive(foundation):
        return foundation
    import torch

    from probe_md.backbone.mace_rebuild import python_model_from_torchscript

    pickled = out_dir / FOUNDATION_PICKLE
    with atomic_output(pickled) as temporary:
        torch.save(python_model_from_torchscript(foundation), temporary)
    return pickled


def mace_train_command() -> list[str]:
    """mace-torch's training entry point, run by the same interpreter as probe-md."""
    return [sys.executable, "-m", "mace.cli.run_train"]


# ----------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class ErrorSummary:
    """Errors of one model on one data set."""

    structures: int
    force_rmse_ev_per_a: float
    force_mae_ev_per_a: float
    energy_rmse_ev_per_atom: float

    @classmethod
    def nan(cls) -> "ErrorSummary":
        return cls(0, float("nan"), float("nan"), float("nan"))


def trusted_atoms(atoms: ase.Atoms) -> np.ndarray:
    """[n_atoms] bool: atoms whose reference forces count (a carved structure's core, else all)."""
    if ARRAY_CORE in atoms.arrays:
        return np.asarray(atoms.arrays[ARRAY_CORE], dtype=bool)
    return np.ones(len(atoms), dtype=bool)


def model_errors(backbone: Backbone, structures: Sequence[ase.Atoms], keys: ReferenceKeys) -> ErrorSummary:
    """Force RMSE/MAE over the trusted atoms' components, energy RMSE per atom over whole
    frames (NaN when all are carved), against the references."""
    if not structures:
        return ErrorSummary.nan()
    predictions = backbone.predict(list(structures))
    force_delta = np.concatenate([
        (p.forces - np.asarray(a.arrays[keys.forces]))[trusted_atoms(a)] for p, a in zip(predictions, structures)
    ])
    energy_delta = np.array([
        (p.energy - float(a.info[keys.energy])) / len(a)
        for p, a in zip(predictions, structures) if ARRAY_CORE not in a.arrays
    ])
    return ErrorSummary(
        structures=len(structures),
        force_rmse_ev_per_a=float(np.sqrt(np.mean(force_delta**2))),
        force_mae_ev_per_a=float(np.mean(np.abs(force_delta))),
        energy_rmse_ev_per_atom=float(np.sqrt(np.mean(energy_delta**2))) if energy_delta.size else float("nan"),
    )


# ----------------------------------------------------------------------------- steps
def split_new_frames(
    frames: Sequence[ase.Atoms], holdout_fraction: float, seed: int
) -> tuple[list[ase.Atoms], list[ase.Atoms]]:
    """(train, holdout): a seeded random holdout, at least one frame each when there are >= 2."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    n_holdout = int(round(holdout_fraction * len(frames)))
    if holdout_fraction > 0 and len(frames) >= 2:
        n_holdout = min(max(n_holdout, 1), len(frames) - 1)
    order = np.random.default_rng(seed).permutation(len(frames))
    holdout = set(order[:n_holdout].tolist())
    train = [a for i, a in enumerate(frames) if i not in holdout]
    return train, [frames[i] for i in sorted(holdout)]


@dataclass(frozen=True)
class NewFrameSplit:
    """The newly labelled frames, split three ways."""

    train: list[ase.Atoms]  # fine-tuned on
    valid: list[ase.Atoms]  # in mace's validation set: the best epoch must also fit the new region
    holdout: list[ase.Atoms]  # never seen by training or model selection: the honest "after" error


def split_new_frames_three_ways(
    frames: Sequence[ase.Atoms], holdout_fraction: float, valid_fraction: float, seed: int
) -> NewFrameSplit:
    """Holdout first (as `split_new_frames`), then a validation share of the rest."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"new-frame validation fraction must be in [0, 1), got {valid_fraction}")
    rest, holdout = split_new_frames(frames, holdout_fraction, seed)
    valid, train = split_new_frames(rest, valid_fraction, seed + 1)[::-1]
    return NewFrameSplit(train=train, valid=valid, holdout=holdout)


def _read_all(paths: Sequence[Path], keys: ReferenceKeys) -> list[ase.Atoms]:
    return [atoms for path in paths for atoms in read_structures(path, keys)]


TRAINER_CORES: Final[str] = "probe_md.loop.core_finetune (per-atom force weights; mace_run_train cannot take them)"
NEW_CONFIG_TYPE: Final[str] = "probe_md_flagged"  # config_type of the new frames (their loss weight)


def _training_copy(
    atoms: ase.Atoms, keys: ReferenceKeys, origin: str, force_origin: bool = False, carved_energies: bool = False
) -> ase.Atoms:
    """Only what the fine-tune reads (labels, config_type, core atoms and the energy/stress
    weights of carved structures): provenance strings stay out."""
    clean = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.info[keys.energy] = float(atoms.info[keys.energy])
    clean.arrays[keys.forces] = np.asarray(atoms.arrays[keys.forces], dtype=float)
    if keys.stress in atoms.info:
        clean.info[keys.stress] = np.asarray(atoms.info[keys.stress], dtype=float)
    clean.info["config_type"] = origin if force_origin else str(atoms.info.get("config_type", origin))
    if ARRAY_CORE in atoms.arrays:
        clean.arrays[ARRAY_CORE] = np.asarray(atoms.arrays[ARRAY_CORE], dtype=bool)
        if not carved_energies:  # the energy of a piece cut out of a frame, surfaces and all
            clean.info[INFO_ENERGY_WEIGHT] = clean.info[INFO_STRESS_WEIGHT] = 0.0
    return clean


def foundation_e0s(model) -> dict[int, float]:
    """Isolated-atom energies of a mace-torch model, {Z: eV} (first head)."""
    numbers = [int(z) for z in model.atomic_numbers.tolist()]
    energies = model.atomic_energies_fn.atomic_energies.detach().reshape(-1, len(numbers))[0]
    return {z: float(e) for z, e in zip(numbers, energies.tolist())}


def mace_arguments(
    config: RetrainConfig,
    train_file: Path,
    valid_file: Path | None,
    dtype: str = "float64",
    e0s: dict[int, float] | None = None,
    foundation: Path | None = None,
) -> list[str]:
    """mace_run_train flags for a plain (single-head) fine-tune of the foundation model
    (`foundation`: the pickled file to pass, default config.foundation_model)."""
    # Keep the isolated-atom energies the model was trained with. They are passed as a dict
    # because `--E0s=foundation` fails in mace-torch 0.3.16 for one-element models trained by
    # mace_run_train (their [1, 1] E0 tensor is squeezed to 0-d, then indexed).
    e0s_flag = "--E0s=foundation" if e0s is None else f"--E0s={e0s!r}"
    arguments = [
        f"--name={MACE_RUN_NAME}",
        f"--foundation_model={Path(foundation or config.foundation_model).resolve()}",
        "--multiheads_finetuning=False",
        e0s_flag,
        f"--train_file={train_file.resolve()}",
        f"--energy_key={config.keys.energy}",
        f"--forces_key={config.keys.forces}",
        f"--max_num_epochs={config.epochs}",
        f"--batch_size={config.batch_size}",
        f"--valid_batch_size={config.batch_size}",
        f"--lr={config.lr}",
        f"--energy_weight={config.energy_weight}",
        f"--forces_weight={config.forces_weight}",
        f"--seed={config.seed}",
        f"--device={config.device}",
        f"--default_dtype={dtype}",  # the foundation's own precision
        "--error_table=PerAtomRMSE",
        "--restart_latest",  # an interrupted retrain resumes from its last checkpoint
        "--plot=False",
        "--num_workers=0",
    ]
    if config.new_frame_weight != 1.0:  # mace weighs each frame's loss by its config_type
        arguments.append(f"--config_type_weights={{'{NEW_CONFIG_TYPE}': {config.new_frame_weight}}}")
    if config.ema_decay is not None:  # EMA keeps a few fine-tuning epochs from forgetting
        arguments += ["--ema", f"--ema_decay={config.ema_decay}"]
    if config.stress_weight > 0:  # frames without REF_stress (open cells) get no stress loss
        arguments += ["--loss=stress", f"--stress_key={config.keys.stress}", f"--stress_weight={config.stress_weight}"]
    else:
        arguments.append("--stress_key=PROBE_MD_NO_STRESS")  # energies and forces only
    if valid_file is not None:
        arguments.append(f"--valid_file={valid_file.resolve()}")
    else:
        arguments.append("--valid_fraction=0.1")
    return arguments + list(config.extra_mace_args)


def run_mace_train(arguments: Sequence[str], work_dir: Path, log_path: Path) -> Path:
    """Run mace_run_train in `work_dir`; returns the pickled model it wrote."""
    work_dir.mkdir(parents=True, exist_ok=True)
    command = mace_train_command() + list(arguments)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(
            f"mace_run_train failed (exit {completed.returncode}): {tail[0] if tail else ''} "
            f"(full log: {log_path})"
        )
    model_path = work_dir / f"{MACE_RUN_NAME}.model"
    if not model_path.is_file():
        raise RuntimeError(f"mace_run_train finished but wrote no {model_path} (log: {log_path})")
    return model_path


def foundation_mismatch_ev_per_a(before: Backbone, foundation: Backbone, structures: Sequence[ase.Atoms]) -> float:
    """Largest force difference between the 'before' model and the foundation (both backbones)."""
    if not structures:
        return 0.0
    return max(
        float(np.abs(a.forces - b.forces).max())
        for a, b in zip(before.predict(structures), foundation.predict(structures))
    )


def kept_criterion(config: RetrainConfig) -> tuple[str, float | None]:
    """The refitted head's (criterion, threshold): explicit, else the head in use's, so that
    "reliable" means the same before and after; None lets train_probe apply its 2 x RMS rule."""
    from probe_md.reliability_labels import DEFAULT_CRITERION
    from probe_md.training import load_head

    if config.before_head is None:
        return DEFAULT_CRITERION, config.head_threshold
    _, info = load_head(config.before_head)
    return info.criterion, config.head_threshold if config.head_threshold is not None else info.threshold


def _load_pickled(path: Path):
    import mace  # noqa: F401  (registers e3nn/mace classes before unpickling)
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def check_inputs(config: RetrainConfig) -> tuple[Path, Path]:
    """(output folder, foundation model), checked before any work: the folder is writable, the
    foundation can be fine-tuned and the head in use (when a head is refitted) loads."""
    from probe_md.backbone.mace import is_torchscript_archive
    from probe_md.backbone.mace_rebuild import config_sidecar

    out_dir = check_output_path(config.out_dir, "retrain output folder", is_folder=True)
    foundation = Path(config.foundation_model)
    if not foundation.is_file():
        raise FileNotFoundError(f"foundation model {foundation} does not exist")
    if is_torchscript_archive(foundation) and not config_sidecar(foundation).is_file():
        raise ValueError(
            f"foundation model {foundation} is TorchScript without an architecture config "
            f"({config_sidecar(foundation).name}): mace_run_train needs the pickled mace-torch .model "
            "written when the model was trained (see probe-md retrain --help)"
        )
    if config.head_data:
        kept_criterion(config)  # a missing or corrupt before_head fails now, not after training
    check_calibration_data(config)
    return out_dir, foundation


def check_calibration_data(config: RetrainConfig) -> None:
    """calibration_data needs a refitted head, existing files and enough whole frames."""
    from probe_md.calibration import check_enough_frames

    if not config.calibration_data:
        return
    if not config.head_data:
        raise ValueError("calibration data recalibrates the refitted head: give head data too")
    for path in config.calibration_data:
        if not Path(path).is_file():
            raise FileNotFoundError(f"calibration data {path} does not exist")
    frames = [a for path in config.calibration_data for a in ase.io.read(path, index=":", format="extxyz")]
    check_enough_frames(sum(ARRAY_CORE not in a.arrays for a in frames))


@dataclass(frozen=True)
class RoundFrames:
    """Every frame one round reads."""

    new: NewFrameSplit
    old: list[ase.Atoms]  # replayed against forgetting (at most max_old_frames of them)
    valid: list[ase.Atoms]  # the MLIP's validation data

    def counts(self) -> dict[str, int]:
        return {"new_train": len(self.new.train), "new_valid": len(self.new.valid),
                "new_holdout": len(self.new.holdout), "old_replayed": len(self.old), "valid": len(self.valid)}


def read_round_frames(config: RetrainConfig) -> RoundFrames:
    """Read new, old and validation frames; split the new ones, subsample the old ones."""
    keys = config.keys
    new = _read_all(config.new_data, keys)
    old = _read_all(config.old_data, keys)
    if config.max_old_frames is not None and len(old) > config.max_old_frames:
        keep = np.sort(np.random.default_rng(config.seed).choice(len(old), config.max_old_frames, replace=False))
        old = [old[i] for i in keep]
    valid = read_structures(config.valid_data, keys) if config.valid_data else []
    split = split_new_frames_three_ways(new, config.holdout_fraction, config.new_valid_fraction, config.seed)
    return RoundFrames(new=split, old=old, valid=valid)


def write_training_sets(
    data_dir: Path, frames: RoundFrames, keys: ReferenceKeys, carved_energies: bool = False
) -> tuple[Path, Path | None]:
    """(train file, validation file or None) for the fine-tune, plus the new-frame splits."""
    train_file = write_extxyz_atomic(
        data_dir / "train.extxyz", _training_set(frames.old, "old", frames.new.train, keys, carved_energies)
    )
    valid_file = None
    if frames.valid or frames.new.valid:
        valid_file = write_extxyz_atomic(
            data_dir / "valid.extxyz", _training_set(frames.valid, "valid", frames.new.valid, keys, carved_energies)
        )
    write_extxyz_atomic(data_dir / "new_train.extxyz", frames.new.train)
    if frames.new.valid:
        write_extxyz_atomic(data_dir / "new_valid.extxyz", frames.new.valid)
    if frames.new.holdout:
        write_extxyz_atomic(data_dir / "new_holdout.extxyz", frames.new.holdout)
    return train_file, valid_file


def _training_set(
    existing: Sequence[ase.Atoms], origin: str, new: Sequence[ase.Atoms], keys: ReferenceKeys,
    carved_energies: bool = False,
) -> list[ase.Atoms]:
    """`existing` frames (config_type: their own, else `origin`), then the new frames (weighted type)."""
    return [_training_copy(a, keys, origin, carved_energies=carved_energies) for a in existing] + [
        _training_copy(a, keys, NEW_CONFIG_TYPE, force_origin=True, carved_energies=carved_energies) for a in new
    ]


def errors_by_set(backbone: Backbone, frames: RoundFrames, keys: ReferenceKeys) -> dict[str, ErrorSummary]:
    """The model's errors on the held-out and trained new frames and on the validation data."""
    return {
        "new_holdout": model_errors(backbone, frames.new.holdout, keys),
        "new_train": model_errors(backbone, frames.new.train, keys),
        "valid": model_errors(backbone, frames.valid, keys),
    }


def model_in_use(
    config: RetrainConfig, foundation_backbone: Backbone, frames: RoundFrames
) -> tuple[Backbone, list[str]]:
    """The 'before' model (before_model, else the foundation) and a note when it is not the foundation."""
    if not config.before_model:
        return foundation_backbone, []
    from probe_md.backbone.mace import MaceBackbone

    before = MaceBackbone.from_file(config.before_model)
    sample = (frames.new.train + frames.new.valid + frames.new.holdout + frames.valid)[:3]
    mismatch = foundation_mismatch_ev_per_a(before, foundation_backbone, sample)
    if mismatch <= 1e-6:
        return before, []
    return before, [
        f"--before-model {config.before_model} and --foundation-model {config.foundation_model} disagree "
        f"(max force difference {mismatch:.3g} eV/Å): 'before' is not the model fine-tuned"
    ]


def fine_tune(
    config: RetrainConfig, out_dir: Path, foundation_backbone, trainable: Path, train_file: Path,
    valid_file: Path | None,
) -> tuple[Path, Path]:
    """Fine-tune (mace_run_train; the atom-weighted loop when carved structures are in the data);
    returns the retrained pickled model and its TorchScript conversion."""
    from probe_md.backbone.mace import save_mace_model

    retrained_pickle = out_dir / RETRAINED_PICKLE
    if holds_carved(train_file, valid_file):
        import torch

        logger.info("retrain: carved structures, atom-weighted fine-tune, %d epochs", config.epochs)
        model = fine_tune_on_cores(config, trainable, train_file, valid_file)
        with atomic_output(retrained_pickle) as temporary:
            torch.save(model, temporary)
    else:
        log_path = out_dir / "mace_train.log"
        logger.info("retrain: mace_run_train, %d epochs (log: %s)", config.epochs, log_path)
        arguments = mace_arguments(config, train_file, valid_file, foundation_backbone.metadata.dtype,
                                   foundation_e0s(foundation_backbone.model), trainable)
        trained_pickle = run_mace_train(arguments, out_dir / "mace", log_path)
        with atomic_output(retrained_pickle) as temporary:  # never half a model under the final name
            shutil.copyfile(trained_pickle, temporary)
    model_pt = out_dir / "model.pt"
    save_mace_model(_load_pickled(retrained_pickle), model_pt)
    return retrained_pickle, model_pt


def holds_carved(*paths: Path | None) -> bool:
    """Whether training/validation files hold carved structures (core atoms marked)."""
    return any(
        ARRAY_CORE in atoms.arrays for path in paths if path for atoms in ase.io.iread(path, index=":", format="extxyz")
    )


def fine_tune_on_cores(config: RetrainConfig, trainable: Path, train_file: Path, valid_file: Path | None):
    """The foundation fine-tuned with per-atom force weights (probe_md.loop.core_finetune)."""
    from probe_md.loop.core_finetune import FineTuneSettings, fine_tune_atom_weighted

    settings = FineTuneSettings(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, energy_weight=config.energy_weight,
        forces_weight=config.forces_weight, stress_weight=config.stress_weight,
        config_type_weights={NEW_CONFIG_TYPE: config.new_frame_weight}, ema_decay=config.ema_decay,
        seed=config.seed, device=config.device,
    )
    train = ase.io.read(train_file, index=":", format="extxyz")
    valid = ase.io.read(valid_file, index=":", format="extxyz") if valid_file else []
    return fine_tune_atom_weighted(_load_pickled(trainable), train, valid, config.keys, settings)


def whole_frames_file(sources: Sequence[Path], destination: Path) -> Path | None:
    """The frames of `sources` that are not carved pieces, written to `destination` (None if
    there are none): a piece's buffer ends in vacuum, so its whole-structure force error and
    pooled features describe surfaces the MD never sees, and the head labels structures by
    the error over all their atoms."""
    frames = [a for path in sources if path.is_file() for a in ase.io.read(path, index=":", format="extxyz")]
    whole = [a for a in frames if ARRAY_CORE not in a.arrays]
    return write_extxyz_atomic(destination, whole) if whole else None


def head_pool_paths(config: RetrainConfig, out_dir: Path) -> list[Path]:
    """head_data + the new whole frames MACE trained or validated on (not the held-out ones)."""
    data = out_dir / "data"
    seen = whole_frames_file([data / "new_train.extxyz", data / "new_valid.extxyz"], data / "head_new_frames.extxyz")
    return [Path(p) for p in config.head_data] + ([seen] if seen else [])


def refit_head(config: RetrainConfig, model_pt: Path, out_dir: Path) -> tuple[Path, dict]:
    """Train a PROBE head for the new backbone on head_data + the new whole frames MACE trained
    or validated on, then recalibrate it on calibration_data or else the held-out new whole
    frames (the user's regime, unseen by the head); returns the head file and its summary (threshold, criterion, counts)."""
    from probe_md.pipeline import TrainRequest, train_probe
    from probe_md.training import TrainingConfig

    logger.info("retrain: refitting the PROBE head on the new backbone")
    training = TrainingConfig(seed=config.seed)
    if config.head_max_epochs is not None:
        training.max_epochs = config.head_max_epochs
    criterion, threshold = kept_criterion(config)
    head_path = out_dir / "head.pt"
    _, head_info = train_probe(
        TrainRequest(
            model_path=model_pt,
            data_paths=head_pool_paths(config, out_dir),
            output_path=head_path,
            in_domain_path=Path(config.valid_data) if config.valid_data else None,
            criterion=criterion,
            threshold=threshold,
            keys=config.keys,
            cache_dir=out_dir / "feature_cache",
            training=training,
        )
    )
    summary = {"threshold": head_info.threshold, "criterion": head_info.criterion, **head_info.metrics}
    if config.before_head is not None and config.head_threshold is None:
        summary["threshold_rule"] = f"kept from the head in use, {config.before_head}"
    summary["recalibration"] = recalibrate_head(model_pt, head_path, out_dir, config.calibration_data)
    return head_path, summary


def recalibrate_head(model_pt: Path, head_path: Path, out_dir: Path, calibration_data: Sequence[Path] = ()) -> dict | str:
    """`probe-md calibrate` on the calibration data's whole frames, else on the held-out new
    ones, when both classes are there (>= 2 each); the head as trained stays next to it as
    head_before_calibration.pt."""
    from probe_md.recalibration import CalibrateRequest, calibrate

    data = out_dir / "data"
    if calibration_data:
        frames = whole_frames_file([Path(p) for p in calibration_data], data / "head_calibration.extxyz")
        source = "the calibration data"
    else:
        frames = whole_frames_file([data / "new_holdout.extxyz"], data / "head_holdout.extxyz")
        source = "the held-out new frames"
    if frames is None:
        return f"skipped: no whole frames in {source}"
    trained = head_path.with_name("head_before_calibration.pt")
    shutil.copyfile(head_path, trained)
    try:  # calibrate writes head.pt atomically: a failure leaves the trained head in place
        fit = calibrate(CalibrateRequest(trained, [frames], head_path, model_pt, cache_dir=out_dir / "feature_cache"))
        return {"calibrated_on": source, **fit}
    except ValueError as error:  # e.g. one class only among the frames
        return f"skipped: {error} ({source})"


def retrain(config: RetrainConfig) -> dict:
    """One retraining round; returns (and writes) the report dict."""
    from probe_md.backbone.mace import MaceBackbone

    started = time.time()
    out_dir, foundation = check_inputs(config)
    trainable = trainable_foundation(foundation, out_dir)
    frames = read_round_frames(config)
    counts = frames.counts()
    logger.info(
        "retrain: %d new frames to train on (%d to validate on, %d held out), %d old frames replayed, "
        "%d validation frames", counts["new_train"], counts["new_valid"], counts["new_holdout"],
        counts["old_replayed"], counts["valid"],
    )
    train_file, valid_file = write_training_sets(out_dir / "data", frames, config.keys, config.carved_energies)
    foundation_backbone = MaceBackbone.from_file(foundation, allow_pickle=True)
    before, notes = model_in_use(config, foundation_backbone, frames)
    errors_before = errors_by_set(before, frames, config.keys)
    retrained_pickle, model_pt = fine_tune(config, out_dir, foundation_backbone, trainable, train_file, valid_file)
    errors_after = errors_by_set(MaceBackbone.from_file(model_pt), frames, config.keys)
    files = {"retrained_pickle": str(retrained_pickle), "model": str(model_pt), "train_data": str(train_file)}
    head_summary = None
    if config.head_data:
        head_path, head_summary = refit_head(config, model_pt, out_dir)
        files["head"] = str(head_path)
        if config.export:
            from probe_md.lammps.export import export_fused_model

            export_fused_model(model_pt, head_path, out_dir / "fused.pt")
            files["fused"] = str(out_dir / "fused.pt")
        if holds_carved(*(Path(p) for p in config.new_data)):
            notes.append("carved structures are not in the head's training pool (their buffers end in vacuum)")
    else:
        notes.append("no --head-data: the PROBE head was not refitted (the old head does not fit the new backbone)")
    report = {
        "foundation_model": str(foundation),
        "before_model": str(config.before_model or foundation),
        "before_head": str(config.before_head) if config.before_head else None,
        "frames": counts,
        "mace_run_train": {**{name: getattr(config, name) for name in REPORTED_SETTINGS},
                           "extra_args": list(config.extra_mace_args)},
        "trainer": (TRAINER_CORES if holds_carved(train_file, valid_file) else "mace_run_train"),
        "errors_before": {k: asdict(v) for k, v in errors_before.items()},
        "errors_after": {k: asdict(v) for k, v in errors_after.items()},
        "head": head_summary,
        "files": files,
        "notes": notes,
        "wall_seconds": round(time.time() - started, 1),
    }
    return write_report(out_dir, report)


def write_report(out_dir: Path, report: dict) -> dict:
    """Write the report as JSON (atomically); returns it with its own path among the files."""
    report_path = out_dir / REPORT_FILE
    atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    report["files"]["report"] = str(report_path)
    return report


def format_report(report: dict) -> str:
    """A small before/after table."""
    lines = [f"{'force RMSE (eV/Å)':<18}{'frames':>7}{'before':>10}{'after':>10}"]
    for name in ("new_holdout", "new_train", "valid"):
        before, after = report["errors_before"][name], report["errors_after"][name]
        if not before["structures"]:
            continue
        label = {"new_holdout": "new (held out)", "new_train": "new (trained)", "valid": "validation"}[name]
        lines.append(
            f"{label:<18}{before['structures']:>7}{before['force_rmse_ev_per_a']:>10.4f}"
            f"{after['force_rmse_ev_per_a']:>10.4f}"
        )
    head = report.get("head")
    if head:
        lines.append(
            f"PROBE head refitted: threshold {head['threshold']:.4g} eV/Å ({head['threshold_rule']}), "
            f"{head['reliable']} reliable / {head['unreliable']} unreliable training structures"
        )
        lines.append(recalibration_line(head.get("recalibration")))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    for name, path in report["files"].items():
        lines.append(f"  {name}: {path}")
    return "\n".join(lines)


def recalibration_line(recalibration: dict | str | None) -> str:
    """One line on the refitted head's recalibration (what, on how many frames, ECE)."""
    if not isinstance(recalibration, dict):
        return f"  recalibration {recalibration or 'not run'}"
    return (f"  recalibrated on {recalibration.get('calibrated_on', 'held-out frames')} "
            f"({recalibration['n_frames']} frames, {recalibration['chosen']}): ECE {recalibration['ece_before']:.3f} -> "
            f"{recalibration['ece_after_out_of_fold']:.3f} out of fold")
