"""MACE cut into per-layer stages, so an MD engine can run each layer on its own atoms only.

With the whole graph, a rank computes every layer on every atom within layers x r_max of its
atoms; most of that work is on ghosts and is thrown away. Staged, a rank computes each layer
for its local atoms only (receivers), and the engine fills the ghost rows of the features the
next layer sends along edges from their owners (forward communication); in the backward pass
the gradients that land on ghost rows go back to the owners (reverse communication). The
ghost shell then only needs r_max. The stages are mace's own modules, called in mace's order;
only the restriction of the receivers to local atoms is ours.

Every tensor that crosses a stage boundary is float64, whatever the model's dtype, so the
engine side never needs to know the model's precision.
"""


from typing import List, Optional, Tuple

import mace  # noqa: F401  (must precede e3nn, see probe_md.backbone.mace)
import torch
from mace.tools.scatter import scatter_sum
from torch import Tensor

SUPPORTED_INTERACTIONS = ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")
SUPPORTED_PRODUCTS = ("EquivariantProductBasisBlock",)


class UnstageableModelError(ValueError):
    """The MACE model has a block the staged (halo-exchange) path does not know."""


def _name(module: torch.nn.Module) -> str:
    # Loaded TorchScript modules keep their python class name in `original_name`.
    return getattr(module, "original_name", type(module).__name__)


def _children(module_list: torch.nn.Module) -> List[torch.nn.Module]:
    # A loaded TorchScript ModuleList cannot be iterated from Python; its children can.
    return [child for _, child in module_list.named_children()]


def why_not_stageable(model: torch.nn.Module) -> Optional[str]:
    """None if `model` can be staged, else the reason in one phrase."""
    for attribute in ("pair_repulsion", "joint_embedding", "embedding_readout"):
        if hasattr(model, attribute):
            return f"it has `{attribute}`"
    interactions, products = _children(model.interactions), _children(model.products)
    for block in interactions:
        if _name(block) not in SUPPORTED_INTERACTIONS:
            return f"interaction block {_name(block)} is not one of {', '.join(SUPPORTED_INTERACTIONS)}"
        if hasattr(block, "conv_fusion"):
            return "its interaction blocks use a fused convolution kernel"
    for block in products:
        if _name(block) not in SUPPORTED_PRODUCTS:
            return f"product block {_name(block)} is not supported"
    if len(_children(model.readouts)) != len(interactions):
        return "it reads out only the last layer"
    return None


class MaceLayerStage(torch.nn.Module):
    """One interaction + product + readout of MACE, with local atoms as the only receivers."""

    residual: bool
    avg_num_neighbors: float

    def __init__(self, interaction: torch.nn.Module, product: torch.nn.Module, readout: torch.nn.Module):
        super().__init__()
        self.linear_up = interaction.linear_up
        self.conv_tp_weights = interaction.conv_tp_weights
        self.conv_tp = interaction.conv_tp
        self.linear = interaction.linear
        self.skip_tp = interaction.skip_tp
        self.reshape = interaction.reshape
        self.product = product
        self.readout = readout
        self.residual = _name(interaction) == "RealAgnosticResidualInteractionBlock"
        self.avg_num_neighbors = float(interaction.avg_num_neighbors)

    def up(self, node_feats: Tensor) -> Tensor:
        """What a node sends along its edges (mace's `linear_up`): the exchanged quantity."""
        return self.linear_up(node_feats)

    def forward(
        self,
        sent: Tensor,
        node_feats: Tensor,
        node_attrs: Tensor,
        edge_attrs: Tensor,
        edge_feats: Tensor,
        cutoff: Optional[Tensor],
        edge_index: Tensor,
        n_local: int,
    ) -> Tuple[Tensor, Tensor]:
        """New features [n_local, C] and readout energies [n_local] of the receivers.

        sent: `up` of every node [N_all, U]; node_feats, node_attrs: receivers' rows only.
        """
        tp_weights = self.conv_tp_weights(edge_feats)
        if cutoff is not None:
            tp_weights = tp_weights * cutoff
        messages = self.conv_tp(sent[edge_index[0]], edge_attrs, tp_weights)
        message = scatter_sum(src=messages, index=edge_index[1], dim=0, dim_size=n_local)
        message = self.linear(message) / self.avg_num_neighbors
        sc: Optional[Tensor] = None
        if self.residual:
            sc = self.skip_tp(node_feats, node_attrs)
        else:
            message = self.skip_tp(message, node_attrs)
        new_feats = self.product(node_feats=self.reshape(message), sc=sc, node_attrs=node_attrs)
        heads = torch.zeros((n_local,), dtype=torch.long, device=new_feats.device)
        energy = self.readout(new_feats, heads)[:, 0]
        return new_feats, energy


class StagedMace(torch.nn.Module):
    """The stages of a ScaleShiftMACE: embedding, edges, layers, node energies."""

    num_elements: int
    exchange_widths: List[int]

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        reason = why_not_stageable(model)
        if reason is not None:
            raise UnstageableModelError(f"this MACE model cannot run layer by layer: {reason}")
        self.node_embedding = model.node_embedding
        self.spherical_harmonics = model.spherical_harmonics
        self.radial_embedding = model.radial_embedding
        self.atomic_energies_fn = model.atomic_energies_fn
        self.scale_shift = model.scale_shift
        self.register_buffer("atomic_numbers", model.atomic_numbers.clone())
        self.num_elements = int(model.atomic_numbers.shape[0])
        self.layers = torch.nn.ModuleList(
            [
                MaceLayerStage(interaction, product, readout)
                for interaction, product, readout in zip(
                    _children(model.interactions), _children(model.products), _children(model.readouts)
                )
            ]
        )
        self.exchange_widths = self._exchange_widths(next(model.parameters()).dtype)

    def _exchange_widths(self, dtype: torch.dtype) -> List[int]:
        """Columns of `up` per layer (what the engine's buffers must hold), from a dry run."""
        widths: List[int] = []
        species = torch.zeros((1,), dtype=torch.long)
        no_edges = torch.zeros((2, 0), dtype=torch.long)
        with torch.no_grad():
            node_feats = self.embedding(species, dtype)
            edges = self.edges(torch.zeros((0, 3), dtype=dtype), species, no_edges)
            for index in range(len(self.layers)):
                sent = self.up(index, node_feats)
                widths.append(int(sent.shape[1]))
                node_feats, _ = self.layer(index, sent, node_feats, species, edges, no_edges, 1)
        return widths

    def node_attrs(self, species_index: Tensor, dtype: torch.dtype) -> Tensor:
        return torch.nn.functional.one_hot(species_index, self.num_elements).to(dtype)

    def embedding(self, species_index: Tensor, dtype: torch.dtype) -> Tensor:
        return self.node_embedding(self.node_attrs(species_index, dtype))

    def edges(self, vectors: Tensor, species_index: Tensor, edge_index: Tensor) -> List[Tensor]:
        """[edge_attrs, edge_feats(, cutoff)] of every edge from its vector
        x[receiver] - x[sender] (mace's convention), in the model dtype."""
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        node_attrs = self.node_attrs(species_index, vectors.dtype)
        edge_feats, cutoff = self.radial_embedding(lengths, node_attrs, edge_index, self.atomic_numbers)
        out = [self.spherical_harmonics(vectors), edge_feats]
        if cutoff is not None:
            out.append(cutoff)
        return out

    def up(self, layer: int, node_feats: Tensor) -> Tensor:
        for index, stage in enumerate(self.layers):
            if index == layer:
                return stage.up(node_feats)
        raise IndexError("layer index out of range")

    def layer(self, layer: int, sent: Tensor, node_feats: Tensor, species_local: Tensor,
              edges: List[Tensor], edge_index: Tensor, n_local: int) -> Tuple[Tensor, Tensor]:
        cutoff: Optional[Tensor] = None
        if len(edges) > 2:
            cutoff = edges[2]
        node_attrs = self.node_attrs(species_local, sent.dtype)
        for index, stage in enumerate(self.layers):
            if index == layer:
                return stage(sent, node_feats, node_attrs, edges[0], edges[1], cutoff, edge_index, n_local)
        raise IndexError("layer index out of range")

    def node_energies(self, species_local: Tensor, readout_energies: Tensor) -> Tensor:
        """mace's node energies [n_local] from the layers' readouts [layers, n_local]."""
        node_attrs = self.node_attrs(species_local, readout_energies.dtype)
        heads = torch.zeros((species_local.shape[0],), dtype=torch.long, device=species_local.device)
        e0 = self.atomic_energies_fn(node_attrs)[:, 0]
        interaction = self.scale_shift(readout_energies.sum(0), heads)
        return e0.to(torch.float64) + interaction.to(torch.float64)
