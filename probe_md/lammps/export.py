"""Fuse a MACE backbone and a PROBE head into one TorchScript file for the LAMMPS plugin.

This is the only module that scripts the deployable artifact (TorchScript is deprecated in
recent PyTorch; keeping it here lets the format change without touching anything else).

The fused module works on a LAMMPS-style graph: local atoms first, then ghost atoms, which
are real periodic images, so edges carry no shifts. Only local atoms' energies are summed;
forces are the gradient of that sum on every atom, ghosts included, and LAMMPS adds ghost
forces back to their owners. With ghosts out to num_layers * r_max every local atom sees
its full receptive field, so local energies, forces and features are exact.
"""

import json
import os

from pathlib import Path
from typing import Dict, Final, List, Optional, Tuple

import mace  # noqa: F401  (must precede e3nn, see probe_md.backbone.mace)
import torch
from torch import Tensor

from probe_md.backbone.mace import MaceBackbone, file_sha256
from probe_md.head import ProbeHead
from probe_md.io_utils import atomic_output, check_output_path
from probe_md.mace_stages import StagedMace, why_not_stageable

# /2: `readout` takes the atom counts (a head may read its logit from the predicted error).
# /3: `head_terms` takes the local atoms' complete forces; `forward_with_features` replaces
#     `forward_with_head` (the engine completes the forces before the head runs).
FUSED_FORMAT: Final[str] = "probe_md.fused/3"
FUSED_METADATA_FILE: Final[str] = "probe_md_fused.json"


class FusedProbeMace(torch.nn.Module):
    """MACE forward + PROBE head terms from the same node features, in one TorchScript module.

    Inputs and outputs are float64 whatever the model dtype (conversion happens inside),
    so the engine side never needs to know the model's precision.
    """

    # Self-description, readable from C++ as module.attr(name).
    probe_md_format: str
    species: List[str]
    atomic_numbers: List[int]
    num_elements: int
    r_max: float
    num_layers: int
    model_dtype: str
    num_heads: int
    value_dim: int
    threshold: float
    temperature: float
    criterion: str

    def __init__(
        self,
        mace_model: torch.nn.Module,
        head: ProbeHead,
        feature_columns: List[int],
        metadata: Dict[str, object],
    ):
        super().__init__()
        self.mace = mace_model
        self.head = head
        self.register_buffer("feature_columns", torch.tensor(feature_columns, dtype=torch.long))
        # Plain attributes so the C++ side reads them with module.attr(...), no JSON parser.
        self.probe_md_format = FUSED_FORMAT
        self.species = list(metadata["species"])
        self.atomic_numbers = [int(z) for z in metadata["atomic_numbers"]]
        self.num_elements = len(self.species)
        self.r_max = float(metadata["r_max"])
        self.num_layers = int(metadata["num_layers"])
        self.model_dtype = str(metadata["dtype"])
        self.num_heads = int(metadata["num_heads"])
        self.value_dim = int(metadata["value_dim"])
        self.threshold = float(metadata["threshold"])
        self.temperature = float(metadata["temperature"])
        self.criterion = str(metadata["criterion"])

    def _model_dtype(self) -> torch.dtype:
        return torch.float64 if self.model_dtype == "float64" else torch.float32

    def _run_mace(
        self, positions: Tensor, species_index: Tensor, edge_index: Tensor, n_local: int
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Local node energies [n_local], forces on all atoms [N,3] (float64), node_feats [N,C]."""
        dtype = self._model_dtype()
        pos = positions.to(dtype).detach().requires_grad_(True)
        n_all = pos.shape[0]
        n_edges = edge_index.shape[1]
        data: Dict[str, Tensor] = {
            "positions": pos,
            "node_attrs": torch.nn.functional.one_hot(species_index, self.num_elements).to(dtype),
            "edge_index": edge_index,
            # Ghost atoms are real images: no edge needs a periodic shift.
            "shifts": torch.zeros((n_edges, 3), dtype=dtype, device=pos.device),
            "unit_shifts": torch.zeros((n_edges, 3), dtype=dtype, device=pos.device),
            "cell": torch.zeros((3, 3), dtype=dtype, device=pos.device),
            "batch": torch.zeros((n_all,), dtype=torch.long, device=pos.device),
            "ptr": torch.tensor([0, n_all], dtype=torch.long, device=pos.device),
            "head": torch.zeros((1,), dtype=torch.long, device=pos.device),
        }
        out = self.mace(data, training=False, compute_force=False)
        node_energy = out["node_energy"]
        node_feats = out["node_feats"]
        assert node_energy is not None
        assert node_feats is not None
        local_energy = node_energy[:n_local]
        total_local_energy = local_energy.sum()
        grad_outputs: List[Optional[Tensor]] = [torch.ones_like(total_local_energy)]
        # Gradient on every atom, ghosts included: LAMMPS adds ghost forces to their owners.
        gradient = torch.autograd.grad(
            [total_local_energy], [pos], grad_outputs=grad_outputs, allow_unused=True
        )[0]
        if gradient is None:
            forces = torch.zeros_like(positions)
        else:
            forces = -gradient.to(torch.float64)
        return local_energy.detach().to(torch.float64), forces, node_feats.detach()

    def forward(
        self, positions: Tensor, species_index: Tensor, edge_index: Tensor, n_local: int
    ) -> Tuple[Tensor, Tensor]:
        """Plain MLIP step: (local node energies [n_local], forces [N_all,3]), eV and eV/Å."""
        node_energy, forces, _ = self._run_mace(positions, species_index, edge_index, n_local)
        return node_energy, forces

    @torch.jit.export
    def forward_with_features(
        self, positions: Tensor, species_index: Tensor, edge_index: Tensor, n_local: int
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Scoring step: the same forward pass plus the local atoms' node features
        [n_local, C] (float64) for `head_terms`, which the engine calls once the local atoms'
        forces are complete (their ghost parts summed back by reverse communication)."""
        node_energy, forces, node_feats = self._run_mace(
            positions, species_index, edge_index, n_local
        )
        return node_energy, forces, node_feats[:n_local].to(torch.float64)

    @torch.jit.export
    def readout(self, pooled: Tensor, atom_counts: Tensor) -> Tensor:
        """Calibrated reliability logit [G] from softmax-pooled values [G, H*D] and the
        structures' atom counts [G] (a logit read from the predicted error depends on them)."""
        dtype = self.head.feature_mean.dtype
        logit = self.head.readout_logit(pooled.to(dtype), atom_counts.to(dtype), True)
        return logit.to(torch.float64)

    @torch.jit.export
    def readout_error(self, pooled: Tensor, atom_counts: Tensor) -> Tensor:
        """Predicted error [G, 3] (lower, median, upper of an 80 % interval) in the criterion's
        units from the same pooled values and the structures' atom counts [G]; NaN when the
        head was trained without errors."""
        dtype = self.head.feature_mean.dtype
        error = self.head.readout_error(pooled.to(dtype), atom_counts.to(dtype))
        return error.to(torch.float64)

    @torch.jit.export
    def head_terms(self, node_feats: Tensor, forces: Tensor) -> Tuple[Tensor, Tensor]:
        """The head's attention logits [n,H] and values [n,H,D] from MACE's node features
        [n, C] and the MLIP's complete forces [n, 3] on the same atoms (eV/Å; read by heads
        that take the force norm)."""
        dtype = self.head.feature_mean.dtype
        features = node_feats.index_select(1, self.feature_columns).to(dtype)
        scores, values = self.head.atom_terms(self.head.inputs(features, forces.to(dtype)))
        return scores.to(torch.float64), values.to(torch.float64)


class StagedFusedProbeMace(FusedProbeMace):
    """The fused model plus MACE's per-layer stages, for engines that exchange halo features
    between layers (see probe_md.mace_stages). The call order, per MD step:

      h = stage_embedding(species[N_all]);  sent = stage_up(0, h);  h = h[:n_local]
      edges = stage_edges(x[receivers] - x[senders], species, edge_index)
      for layer: (sent = stage_up(layer, h) on local rows, ghost rows from their owners)
                 h, e[layer] = stage_layer(layer, sent, h, species[:n_local], edges, edge_index, n_local)
      node_energy = stage_energy(species[:n_local], stack(e))
      scores, values = head_terms(cat(h of every layer))

    The engine chains the stages' gradients backwards down to the edge vectors, returning
    ghost rows' gradients of `sent` to their owners before each `stage_up` (reverse
    communication); -dE/d(vector) of an edge is the force on its receiver, +that on its sender.
    """

    exchange_widths: List[int]

    def __init__(self, mace_model, head, feature_columns, metadata):
        super().__init__(mace_model, head, feature_columns, metadata)
        self.stages = StagedMace(mace_model)
        # Read by the engine (module.attr): columns exchanged before each layer.
        self.exchange_widths = list(self.stages.exchange_widths)

    @torch.jit.export
    def stage_embedding(self, species_index: Tensor) -> Tensor:
        return self.stages.embedding(species_index, self._model_dtype()).to(torch.float64)

    @torch.jit.export
    def stage_edges(self, vectors: Tensor, species_index: Tensor, edge_index: Tensor) -> List[Tensor]:
        """Edge terms from edge vectors [E,3] = x[receiver] - x[sender] (float64)."""
        return self.stages.edges(vectors.to(self._model_dtype()), species_index, edge_index)

    @torch.jit.export
    def stage_up(self, layer: int, node_feats: Tensor) -> Tensor:
        return self.stages.up(layer, node_feats.to(self._model_dtype())).to(torch.float64)

    @torch.jit.export
    def stage_layer(
        self,
        layer: int,
        sent: Tensor,
        node_feats: Tensor,
        species_local: Tensor,
        edges: List[Tensor],
        edge_index: Tensor,
        n_local: int,
    ) -> Tuple[Tensor, Tensor]:
        dtype = self._model_dtype()
        new_feats, energy = self.stages.layer(
            layer, sent.to(dtype), node_feats.to(dtype), species_local, edges, edge_index, n_local
        )
        return new_feats.to(torch.float64), energy.to(torch.float64)

    @torch.jit.export
    def stage_energy(self, species_local: Tensor, readout_energies: Tensor) -> Tensor:
        return self.stages.node_energies(species_local, readout_energies.to(self._model_dtype()))


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _load_inputs(mace_path: Path, head_path: Path) -> tuple[MaceBackbone, ProbeHead, object]:
    from probe_md.training import load_head

    backbone = MaceBackbone.from_file(mace_path)
    head, info = load_head(head_path)
    if head.config.backbone_feature_dim != backbone.feature_dim:
        raise ValueError(
            f"head file {head_path} expects {head.config.backbone_feature_dim} features per atom, but MACE "
            f"model {mace_path} gives {backbone.feature_dim}: export the head trained on this model"
        )
    return backbone, head, info


def fused_metadata(backbone: MaceBackbone, head: ProbeHead, info, mace_path, head_path) -> dict:
    """The self-description stored inside the fused file."""
    meta = backbone.metadata
    return {
        "format": FUSED_FORMAT,
        "species": list(meta.species),
        "atomic_numbers": list(meta.atomic_numbers),
        "r_max": float(meta.r_max),
        "num_layers": int(meta.num_layers),
        "interaction_range": float(meta.r_max) * int(meta.num_layers),
        "dtype": meta.dtype,
        "feature_dim": len(meta.feature_columns),
        "num_heads": int(head.num_heads),
        "value_dim": int(head.value_dim),
        # the head reads the local atoms' complete MLIP forces (`head_terms`): ML-IAP needs its
        # reverse exchange for them
        "reads_force_norm": bool(head.reads_force_norm),
        "threshold": float(info.threshold),
        "criterion": str(info.criterion),
        "temperature": float(head.temperature),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
        "versions": {
            "torch": torch.__version__,
            "mace-torch": _package_version("mace-torch"),
            "probe-md": _package_version("probe-md"),
        },
        "sha256": {"mace": file_sha256(mace_path), "head": file_sha256(head_path)},
        # Per-layer stages for halo exchange (`pair_style probe/mace ... exchange yes`).
        "staged": why_not_stageable(backbone.model) is None,
        "not_staged_because": why_not_stageable(backbone.model) or "",
    }


def build_fused_module(
    backbone: MaceBackbone, head: ProbeHead, metadata: dict
) -> torch.jit.ScriptModule:
    """Script the fused module (no file I/O; the export test uses it too)."""
    head = head.eval()
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    fused_class = StagedFusedProbeMace if metadata.get("staged") else FusedProbeMace
    fused = fused_class(backbone.model, head, list(backbone.metadata.feature_columns), metadata)
    return torch.jit.script(fused.eval())


def export_fused_model(
    mace_path: str | os.PathLike,
    head_path: str | os.PathLike,
    out_path: str | os.PathLike,
    dtype: Optional[str] = None,
) -> dict:
    """Write the fused TorchScript file for `pair_style probe/mace`; returns its metadata.
    dtype "float32"/"float64" casts the MACE model (default: its own dtype)."""
    from probe_md.backbone.mace_precision import cast_backbone

    mace_path, head_path, out_path = Path(mace_path), Path(head_path), Path(out_path)
    check_output_path(out_path, "fused model file")
    backbone, head, info = _load_inputs(mace_path, head_path)
    if dtype is not None:
        backbone = cast_backbone(backbone, dtype)
    metadata = fused_metadata(backbone, head, info, mace_path, head_path)
    scripted = build_fused_module(backbone, head, metadata)
    with atomic_output(out_path) as temporary:
        torch.jit.save(scripted, str(temporary), _extra_files={FUSED_METADATA_FILE: json.dumps(metadata)})
    return metadata


def read_fused_metadata(path: str | os.PathLike) -> dict:
    """The JSON self-description of a fused file, without loading its weights into a model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fused model file {path} does not exist")
    extra = {FUSED_METADATA_FILE: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as error:
        raise ValueError(f"fused model file {path} is corrupt: {str(error).splitlines()[0]}") from None
    if not extra[FUSED_METADATA_FILE]:
        raise ValueError(f"{path} is not a probe-md fused model: export one with `probe-md export`")
    metadata = json.loads(extra[FUSED_METADATA_FILE])
    if metadata.get("format") != FUSED_FORMAT:
        raise ValueError(f"fused model file {path} has format {metadata.get('format')!r}, this probe-md reads "
                         f"{FUSED_FORMAT!r}: re-export it with `probe-md export --model M --head H -o fused.pt`")
    return metadata
