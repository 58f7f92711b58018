"""Rebuild a trainable mace-torch model from a TorchScript file and its architecture config.

mace_run_train fine-tunes a pickled python model (`--foundation_model`); probe-md ships and
runs TorchScript. A scripted module keeps the python model's `state_dict` (same keys), so the
python model is mace's own `ScaleShiftMACE(**config)` with those weights loaded — the recipe
of `mace.tools.scripts_utils.extract_model`. The config (`extract_config_mace_model`) holds
classes, functions and irreps; here it is written as plain JSON and read back through an
allow-list, so nothing is unpickled from a file we did not write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

CONFIG_FORMAT: Final[str] = "probe_md.mace_config/1"
CONFIG_SUFFIX: Final[str] = ".mace_config.json"  # sidecar next to a TorchScript file: <file>.pt.mace_config.json
_IRREPS_KEYS: Final[tuple[str, ...]] = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_CLASS_KEYS: Final[tuple[str, ...]] = ("interaction_cls", "interaction_cls_first", "readout_cls")
_ARRAY_KEYS: Final[tuple[str, ...]] = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")
_GATES: Final[dict[str, Any]] = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "None": None,
}


def mace_config_to_json(model: torch.nn.Module) -> dict:
    """The constructor arguments of a mace-torch ScaleShiftMACE, as plain JSON values."""
    import mace  # noqa: F401  (mace before e3nn: it sets up e3nn's constants)
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    if "error" in config:
        raise ValueError(f"cannot describe this model for rebuilding: {config['error']}")
    if config.get("cueq_config") is not None or config.get("embedding_specs"):
        raise ValueError("cannot describe this model for rebuilding: cuequivariance or embedding heads")
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if key in _IRREPS_KEYS:
            plain[key] = None if value is None else str(value)
        elif key in _CLASS_KEYS:
            plain[key] = f"{value.__module__}:{value.__qualname__}"
        elif key == "gate":
            plain[key] = "None" if value is None else value.__name__
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            plain[key] = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
        else:
            plain[key] = value
    return {"format": CONFIG_FORMAT, "model_class": type(model).__name__, "config": plain}


def _resolve_class(name: str):
    """`module:Class` from mace's own modules only (an allow-list, not arbitrary imports)."""
    import importlib

    module_name, _, class_name = name.partition(":")
    if module_name != "mace.modules" and not module_name.startswith("mace.modules."):
        raise ValueError(f"MACE config names class {name!r}, outside mace.modules")
    return getattr(importlib.import_module(module_name), class_name)


def rebuild_mace_model(description: dict, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """mace's `ScaleShiftMACE(**config)` with `state_dict` loaded (strict), in eval mode."""
    import mace  # noqa: F401
    from e3nn import o3
    from mace import modules

    if description.get("format") != CONFIG_FORMAT:
        raise ValueError(f"not a probe-md MACE config (format {description.get('format')!r})")
    if description.get("model_class") != "ScaleShiftMACE":
        raise ValueError(f"only ScaleShiftMACE models can be rebuilt, got {description.get('model_class')!r}")
    config = dict(description["config"])
    for key in _IRREPS_KEYS:
        config[key] = None if config.get(key) is None else o3.Irreps(config[key])
    for key in _CLASS_KEYS:
        config[key] = _resolve_class(config[key])
    if config.get("gate") not in _GATES:
        raise ValueError(f"MACE config names gate {config.get('gate')!r}; known: {', '.join(_GATES)}")
    config["gate"] = _GATES[config["gate"]]
    for key in _ARRAY_KEYS:
        config[key] = np.asarray(config[key], dtype=float)
    config["atomic_numbers"] = [int(z) for z in config["atomic_numbers"]]
    floating = next(v.dtype for v in state_dict.values() if v.is_floating_point())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(floating)  # mace builds its buffers in the default dtype
    try:
        model = modules.ScaleShiftMACE(**config)
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def config_sidecar(torchscript_path: str | os.PathLike) -> Path:
    return Path(f"{torchscript_path}{CONFIG_SUFFIX}")


def write_config_sidecar(model: torch.nn.Module, torchscript_path: str | os.PathLike) -> Path:
    """Write `<torchscript file>.mace_config.json` (atomically) describing `model`."""
    from probe_md.io_utils import atomic_write_text

    path = config_sidecar(torchscript_path)
    atomic_write_text(path, json.dumps(mace_config_to_json(model), indent=1) + "\n")
    return path


def python_model_from_torchscript(torchscript_path: str | os.PathLike) -> torch.nn.Module:
    """The trainable python model behind a probe-md MACE TorchScript file and its config sidecar."""
    torchscript_path = Path(torchscript_path)
    sidecar = config_sidecar(torchscript_path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{torchscript_path} has no architecture config ({sidecar.name}): mace_run_train needs the pickled "
            "mace-torch .model written when the model was trained, or a config written by `probe-md convert-mace`"
        )
    description = json.loads(sidecar.read_text(encoding="utf-8"))
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    return rebuild_mace_model(description, {k: v.detach().clone() for k, v in scripted.state_dict().items()})
