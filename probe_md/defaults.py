"""The embedded Cu default: a small MACE, 3 more ensemble members, a PROBE head, test data,
and what retraining needs (the MACE architecture config, its training/validation data and a
400-structure subset of the head's training pool)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_DIR = Path(str(resources.files("probe_md") / "data" / "default"))

MODEL_FILE = "cu_mace.pt"
HEAD_FILE = "cu_head.pt"
ENSEMBLE_FILES = ("cu_mace.pt", "cu_mace_member2.pt", "cu_mace_member3.pt", "cu_mace_member4.pt")
TEST_DATA_FILE = "cu_test.extxyz.gz"
MLIP_TRAIN_FILE = "cu_mlip_train.extxyz.gz"  # what the MACE models were trained on (250 structures)
MLIP_VALID_FILE = "cu_mlip_valid.extxyz.gz"  # their validation set (50); sets the head threshold
HEAD_POOL_FILE = "cu_head_pool_400.extxyz.gz"  # random 400 of the head's 1598 training structures


def _existing(name: str) -> Path:
    path = DEFAULT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded default {name} is missing from {DEFAULT_DIR}: reinstall probe-md or "
            "regenerate it with examples/default_cu (see its README)"
        )
    return path


def default_model_path() -> Path:
    return _existing(MODEL_FILE)


def default_head_path() -> Path:
    return _existing(HEAD_FILE)


def default_ensemble_paths() -> list[Path]:
    """The K=4 ensemble: the main model plus three members trained with other seeds."""
    return [_existing(name) for name in ENSEMBLE_FILES]


def default_test_data_path() -> Path:
    return _existing(TEST_DATA_FILE)


def default_mlip_train_path() -> Path:
    return _existing(MLIP_TRAIN_FILE)


def default_mlip_valid_path() -> Path:
    return _existing(MLIP_VALID_FILE)


def default_head_pool_path() -> Path:
    return _existing(HEAD_POOL_FILE)
