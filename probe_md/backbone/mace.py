"""MACE adapter: one forward pass gives energy, forces and the frozen invariant node features.

Shipped and exported MACE models are TorchScript files (`torch.jit.load`, no pickles) that
carry a small JSON description of themselves (`probe_md_backbone.json`). A pickled
mace-torch `.model` file (what `mace_run_train` writes) is only opened with
`allow_pickle=True`, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import ase
import numpy as np

import mace  # noqa: F401  (must precede e3nn: it sets torch.load flags e3nn 0.4 needs)
import torch
from mace import data as mace_data
from mace.tools import torch_geometric
from mace.tools.utils import AtomicNumberTable

from probe_md.backbone.base import StructurePrediction
from probe_md.io_utils import atomic_output

METADATA_FILE = "probe_md_backbone.json"
FORMAT_TAG = "probe_md.mace/1"


@dataclass(frozen=True)
class MaceMetadata:
    """What a saved MACE backbone says about itself."""

    species: list[str]
    atomic_numbers: list[int]
    r_max: float
    num_layers: int
    feature_columns: list[int]  # columns of MACE's `node_feats` that are invariant (0e)
    node_feats_dim: int
    dtype: str
    heads: list[str] = field(default_factory=lambda: ["Default"])
    mace_version: str = ""
    format: str = FORMAT_TAG


def invariant_feature_columns(model: torch.nn.Module) -> tuple[list[int], int]:
    """Columns of `node_feats` holding the scalar (0e) channels of every interaction layer.

    MACE concatenates each layer's output irreps; the scalars are the rotation-invariant part.
    Returns (columns, total node_feats width).
    """
    columns: list[int] = []
    offset = 0
    for product in model.products:
        irreps = product.linear.irreps_out
        for mul_ir, ir_slice in zip(irreps, irreps.slices()):
            if mul_ir.ir.l == 0 and mul_ir.ir.p == 1:
                columns.extend(range(offset + ir_slice.start, offset + ir_slice.stop))
        offset += irreps.dim
    return columns, offset


def describe_mace_model(model: torch.nn.Module) -> MaceMetadata:
    """Metadata of a mace-torch python model (before scripting)."""
    from ase.data import chemical_symbols
    from mace.__version__ import __version__ as mace_version

    numbers = [int(z) for z in model.atomic_numbers.tolist()]
    columns, width = invariant_feature_columns(model)
    dtype = next(model.parameters()).dtype
    return MaceMetadata(
        species=[chemical_symbols[z] for z in numbers],
        atomic_numbers=numbers,
        r_max=float(model.r_max),
        num_layers=int(model.num_interactions),
        feature_columns=columns,
        node_feats_dim=width,
        dtype=str(dtype).replace("torch.", ""),
        heads=list(getattr(model, "heads", None) or ["Default"]),
        mace_version=mace_version,
    )


def save_mace_model(model: torch.nn.Module, path: str | os.PathLike) -> MaceMetadata:
    """Compile a mace-torch model to TorchScript and save it with its metadata, atomically;
    its architecture config goes next to it, so `probe-md retrain` can rebuild it for training."""
    from e3nn.util import jit

    from probe_md.backbone.mace_rebuild import write_config_sidecar

    model = model.eval()
    metadata = describe_mace_model(model)
    try:
        write_config_sidecar(model, path)
    except ValueError as error:  # an architecture mace cannot describe: still usable, not retrainable
        warnings.warn(f"{path}: no architecture config written ({error}); retrain needs the pickled model")
    scripted = jit.compile(model)
    _atomic_jit_save(scripted, Path(path), {METADATA_FILE: json.dumps(asdict(metadata))})
    return metadata


def _atomic_jit_save(module, path: Path, extra_files: dict[str, str]) -> None:
    with atomic_output(path) as temporary:
        torch.jit.save(module, str(temporary), _extra_files=extra_files)


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold compiled code; torch.save pickles hold only data.pkl."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Batches stop growing past this many atoms: 16 cells of 4000 atoms in one graph need ~10 GB.
MAX_ATOMS_PER_BATCH = 4096


def atom_budget_batches(structures: Sequence[ase.Atoms], max_structures: int, max_atoms: int) -> list[list[ase.Atoms]]:
    """Consecutive batches of at most `max_structures` structures and `max_atoms` atoms (a
    structure larger than the budget gets a batch of its own)."""
    batches: list[list[ase.Atoms]] = []
    current: list[ase.Atoms] = []
    atoms_in_current = 0
    for atoms in structures:
        if current and (len(current) >= max_structures or atoms_in_current + len(atoms) > max_atoms):
            batches.append(current)
            current, atoms_in_current = [], 0
        current.append(atoms)
        atoms_in_current += len(atoms)
    if current:
        batches.append(current)
    return batches


class MaceBackbone:
    """A frozen MACE model behind the `Backbone` contract."""

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: MaceMetadata,
        fingerprint: str,
        batch_size: int = 16,
        device: str = "cpu",
        source: str = "<memory>",
    ):
        self.model = model.to(device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.metadata = metadata
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.source = source
        self.dtype = getattr(torch, metadata.dtype)
        self._z_table = AtomicNumberTable(metadata.atomic_numbers)
        self._columns = torch.tensor(metadata.feature_columns, dtype=torch.long, device=device)

    # --- the Backbone contract -------------------------------------------------------
    @property
    def species(self) -> tuple[str, ...]:
        return tuple(self.metadata.species)

    @property
    def cutoff(self) -> float:
        return self.metadata.r_max

    @property
    def num_layers(self) -> int:
        return self.metadata.num_layers

    @property
    def feature_dim(self) -> int:
        return len(self.metadata.feature_columns)

    # --- loading ---------------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        allow_pickle: bool = False,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> "MaceBackbone":
        """Load a TorchScript MACE saved by `save_mace_model` (or a trusted pickled one)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MACE model file {path} does not exist")
        if path.stat().st_size == 0:
            raise ValueError(f"MACE model file {path} is empty: write it again (`probe-md convert-mace`)")
        if is_torchscript_archive(path):
            extra = {METADATA_FILE: ""}
            try:
                model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            except RuntimeError as error:
                raise ValueError(f"MACE model file {path} is corrupt: {str(error).splitlines()[0]}")
            if not extra[METADATA_FILE]:
                raise ValueError(
                    f"TorchScript file {path} has no {METADATA_FILE}: save MACE models with "
                    "`probe-md convert-mace` (probe_md.backbone.mace.save_mace_model)"
                )
            metadata = MaceMetadata(**json.loads(extra[METADATA_FILE]))
            return cls(model, metadata, file_sha256(path), batch_size, device, str(path))
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"MACE model file {path} is neither TorchScript nor a torch file (truncated?): write it "
                "again, or convert a mace-torch model with `probe-md convert-mace`"
            )
        if not allow_pickle:
            raise ValueError(
                f"MACE model file {path} is a pickle (mace_run_train output); convert it once with "
                f"`probe-md convert-mace {path} -o model.pt` if you trust it (unpickling runs code)"
            )
        model = torch.load(path, map_location=device, weights_only=False)
        return cls(model, describe_mace_model(model), file_sha256(path), batch_size, device, str(path))

    # --- prediction ------------------------------------------------------------------
    def check_species(self, structures: Sequence[ase.Atoms]) -> None:
        known = set(self.metadata.atomic_numbers)
        for index, atoms in enumerate(structures):
            unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
            if unknown or not known.issuperset(atoms.numbers):
                raise ValueError(
                    f"structure {index} contains {', '.join(unknown)}, but the MACE model "
                    f"{self.source} knows only [{', '.join(self.species)}]"
                )

    def _graphs(self, structures: Sequence[ase.Atoms]):
        keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
        graphs = []
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            for atoms in structures:
                config = mace_data.config_from_atoms(atoms, key_specification=keyspec)
                graphs.append(
                    mace_data.AtomicData.from_config(
                        config, z_table=self._z_table, cutoff=self.cutoff, heads=self.metadata.heads
                    )
                )
        finally:
            torch.set_default_dtype(previous_dtype)
        return graphs

    def forward_batch(
        self, structures: Sequence[ase.Atoms], compute_stress: bool = False
    ) -> dict[str, torch.Tensor]:
        """One MACE forward pass: energy [G], node_energy [N], forces [N,3], features [N,F], batch [N]
        (and stress [G,3,3] in eV/Å³ when asked)."""
        graphs = self._graphs(structures)
        batch = torch_geometric.Batch.from_data_list(graphs).to(self.device)
        output = self.model(
            batch.to_dict(), training=False, compute_force=True, compute_stress=compute_stress
        )
        result = {
            "energy": output["energy"].detach(),
            "node_energy": output["node_energy"].detach(),
            "forces": output["forces"].detach(),
            "features": output["node_feats"].detach().index_select(1, self._columns),
            "batch": batch["batch"],
        }
        if compute_stress:
            result["stress"] = output["stress"].detach()
        return result

    def predict(self, structures: Sequence[ase.Atoms]) -> list[StructurePrediction]:
        self.check_species(structures)
        predictions: list[StructurePrediction] = []
        for chunk in atom_budget_batches(structures, self.batch_size, MAX_ATOMS_PER_BATCH):
            out = self.forward_batch(chunk)
            counts = [len(atoms) for atoms in chunk]
            forces = torch.split(out["forces"], counts)
            features = torch.split(out["features"], counts)
            for i in range(len(chunk)):
                predictions.append(
                    StructurePrediction(
                        energy=float(out["energy"][i]),
                        forces=forces[i].cpu().numpy().astype(np.float64),
                        features=features[i].cpu().numpy().astype(np.float64),
                    )
                )
        return predictions
