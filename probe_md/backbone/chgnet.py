"""CHGNet adapter: a pretrained universal MLIP (graph of atoms, bonds and angles) behind the
`Backbone` contract.

Features are CHGNet's 64-d atom features before its last atom-convolution layer (what
`return_atom_feas=True` gives); they are built from distances and angles only, so they are
rotation, translation and permutation invariant. CHGNet files are plain state dicts,
opened with `torch.load(weights_only=True)`: no pickled code is ever run.
The `chgnet` package (and pymatgen with it) is optional: `CHGNET_AVAILABLE` says whether
it is installed, and nothing here imports it before a CHGNet model is actually loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import ase
import numpy as np
import torch

from probe_md.backbone.base import StructurePrediction
from probe_md.io_utils import atomic_output

CHGNET_AVAILABLE = importlib.util.find_spec("chgnet") is not None
FORMAT_TAG = "probe_md.chgnet/1"
METADATA_KEY = "probe_md_backbone"  # JSON string next to CHGNet's {"model": {state_dict, model_args}}
MAX_ATOMIC_NUMBER = 94  # CHGNet's element embedding covers H..Pu


def _require_chgnet() -> None:
    if not CHGNET_AVAILABLE:
        raise ImportError("CHGNet backbones need the chgnet package: pip install chgnet")


def _load_state(path: Path) -> dict | None:
    """The checkpoint dict if `path` is a CHGNet checkpoint (ours or CHGNet's own), else None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if any("/code/" in name for name in archive.namelist()):
            return None  # TorchScript (a MACE backbone), not a state dict
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # TorchScript archives and pickled modules are not plain state dicts
        return None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "model_args" in state["model"]:
        return state
    return None


def is_chgnet_file(path: str | os.PathLike) -> bool:
    """True for CHGNet checkpoints (no chgnet import; weights-only loading never runs code)."""
    path = Path(path)
    return path.is_file() and _load_state(path) is not None


def save_chgnet_model(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Save a CHGNet model with its metadata, atomically; returns the metadata."""
    metadata = {
        "format": FORMAT_TAG,
        "version": str(model.model_args.get("version") or ""),
        "atom_graph_cutoff": float(model.model_args["atom_graph_cutoff"]),
        "n_conv": int(model.n_conv),
        "feature_dim": int(model.atom_fea_dim),
    }
    with atomic_output(path) as temporary:
        torch.save({"model": model.as_dict(), METADATA_KEY: json.dumps(metadata)}, temporary)
    return metadata


def _tensor_sha256(state_dict: dict) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class CHGNetBackbone:
    """A frozen CHGNet model behind the `Backbone` contract."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 16, source: str = "<memory>"):
        _require_chgnet()
        self.model = model.to("cpu").eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        # An atom with no neighbour within the cutoff still gets a prediction (as in MACE):
        # such sparse cells are exactly what PROBE should learn to flag.
        self.model.graph_converter.set_isolated_atom_response("ignore")
        self.batch_size = batch_size
        self.source = source
        # The weights themselves, so a re-saved identical model keeps its fingerprint.
        self.fingerprint = _tensor_sha256(self.model.state_dict())

    # --- the Backbone contract -------------------------------------------------------
    @property
    def species(self) -> tuple[str, ...]:
        from ase.data import chemical_symbols

        return tuple(chemical_symbols[1 : MAX_ATOMIC_NUMBER + 1])

    @property
    def cutoff(self) -> float:
        return float(self.model.model_args["atom_graph_cutoff"])

    @property
    def num_layers(self) -> int:
        return int(self.model.n_conv)

    @property
    def feature_dim(self) -> int:
        return int(self.model.atom_fea_dim)

    # --- loading ---------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, batch_size: int = 16, **_ignored) -> "CHGNetBackbone":
        """Load a CHGNet checkpoint (saved by `save_chgnet_model`, or a CHGNet .pth.tar)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CHGNet model file {path} does not exist")
        state = _load_state(path)
        if state is None:
            raise ValueError(f"{path} is not a CHGNet checkpoint (a dict with model/model_args)")
        if METADATA_KEY in state:
            tag = json.loads(state[METADATA_KEY]).get("format")
            if tag != FORMAT_TAG:
                raise ValueError(f"CHGNet model file {path} has format {tag!r}; expected {FORMAT_TAG!r}")
        _require_chgnet()
        from chgnet.model import CHGNet

        model = CHGNet.from_dict(state["model"])
        return cls(model, batch_size, str(path))

    @classmethod
    def from_pretrained(cls, name: str = "0.3.0", batch_size: int = 16) -> "CHGNetBackbone":
        """One of the checkpoints shipped inside the chgnet package ("0.3.0", "0.2.0", "r2scan")."""
        _require_chgnet()
        from chgnet.model import CHGNet

        return cls(CHGNet.load(model_name=name, use_device="cpu", verbose=False), batch_size,
                   f"chgnet {name}")

    # --- prediction ------------------------------------------------------------------
    def _graphs(self, structures: Sequence[ase.Atoms]):
        from pymatgen.io.ase import AseAtomsAdaptor

        graphs = []
        for index, atoms in enumerate(structures):
            if not np.all(atoms.pbc):
                raise ValueError(
                    f"structure {index} is not periodic in all directions; CHGNet needs a "
                    "cell (put molecules in a vacuum box with pbc=True)"
                )
            unknown = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers)
                              if not 1 <= z <= MAX_ATOMIC_NUMBER})
            if unknown:
                raise ValueError(f"structure {index} contains {', '.join(unknown)}, unknown to CHGNet")
            structure = AseAtomsAdaptor.get_structure(atoms)
            graphs.append(self.model.graph_converter(structure, graph_id=str(index)))
        return graphs

    def predict(self, structures: Sequence[ase.Atoms]) -> list[StructurePrediction]:
        if not structures:
            return []
        graphs = self._graphs(structures)
        outputs = self.model.predict_graph(
            graphs, task="ef", return_atom_feas=True, batch_size=self.batch_size
        )
        if isinstance(outputs, dict):
            outputs = [outputs]
        predictions = []
        for atoms, out in zip(structures, outputs):
            # CHGNet's pretrained models are intensive: "e" is eV per atom.
            energy = float(out["e"]) * (len(atoms) if self.model.is_intensive else 1)
            predictions.append(
                StructurePrediction(
                    energy=energy,
                    forces=np.asarray(out["f"], dtype=np.float64).reshape(len(atoms), 3),
                    features=np.asarray(out["atom_fea"], dtype=np.float64).reshape(len(atoms), -1),
                )
            )
        return predictions
