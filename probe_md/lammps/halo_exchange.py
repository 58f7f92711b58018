"""One MD step of the staged fused model with halo exchange between layers, in Python.

The same algorithm as `pair_style probe/mace ... exchange yes` (the C++ plugin), for engines
that call Python (ML-IAP unified) and as the executable specification the tests check the
plugin against. The engine provides two exchanges over rows of a [N_all, W] tensor whose
first n_local rows are this rank's atoms and the rest ghosts:

  forward(t):  ghost rows <- their owners' rows          (LAMMPS forward communication)
  reverse(t):  owners' rows += their ghosts' rows        (LAMMPS reverse communication)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor

Exchange = Callable[[Tensor], Tensor]


class StagedStep(NamedTuple):
    """node_energy [n_local]; edge_gradient [E, 3] = dE/d(vector) of every edge (its receiver
    feels -that, its sender +that); node_feats [n_local, C] (every layer's output,
    concatenated: what the head reads)."""

    node_energy: Tensor
    edge_gradient: Tensor
    node_feats: Tensor


def edge_vectors(positions: Tensor, edge_index: Tensor) -> Tensor:
    """mace's edge vectors x[receiver] - x[sender] [E, 3]."""
    return positions[edge_index[1]] - positions[edge_index[0]]


def atom_forces(edge_gradient: Tensor, edge_index: Tensor, n_atoms: int) -> Tensor:
    """Forces [n_atoms, 3] (ghost rows included) from the edges' dE/d(vector)."""
    forces = edge_gradient.new_zeros((n_atoms, 3))
    forces.index_add_(0, edge_index[1], -edge_gradient)
    forces.index_add_(0, edge_index[0], edge_gradient)
    return forces


def _leaf(tensor: Tensor) -> Tensor:
    return tensor.detach().requires_grad_(True)


@dataclass
class _Tape:
    """What the backward pass needs of the forward pass, one entry per layer."""

    feats_in: List[Optional[Tensor]]  # leaf node features of the local atoms (layer > 0)
    sent_local: List[Optional[Tensor]]  # linear_up of them, before the exchange
    sent_all: List[Tensor]  # leaf of the exchanged rows, local + ghosts
    feats_out: List[Tensor]
    energies: List[Tensor]


def staged_step(
    fused: torch.jit.ScriptModule,
    vectors: Tensor,
    species: Tensor,
    edge_index: Tensor,
    n_local: int,
    forward: Exchange,
    reverse: Exchange,
) -> StagedStep:
    """Energies, edge gradients and features of the local atoms, computed layer by layer on
    them. vectors [E, 3]: x[receiver] - x[sender]; receivers are local atoms; species [N_all]."""
    vectors = _leaf(vectors.to(torch.float64))
    edges = fused.stage_edges(vectors, species, edge_index)
    edge_leaves = [_leaf(t) for t in edges]
    tape = _forward_layers(fused, species, edge_leaves, edge_index, n_local, forward)
    energy_leaves = [_leaf(e) for e in tape.energies]
    node_energy = fused.stage_energy(species[:n_local], torch.stack(energy_leaves))
    energy_grads = torch.autograd.grad([node_energy.sum()], energy_leaves)
    edge_grads = _backward_layers(tape, edge_leaves, list(energy_grads), n_local, reverse)
    used = [(t, g) for t, g in zip(edges, edge_grads) if t.requires_grad]
    edge_gradient = torch.autograd.grad([t for t, _ in used], [vectors], [g for _, g in used])[0]
    return StagedStep(
        node_energy.detach(),
        edge_gradient.detach(),
        torch.cat([f.detach() for f in tape.feats_out], dim=1),
    )


def _forward_layers(fused, species: Tensor, edge_leaves: List[Tensor], edge_index: Tensor, n_local: int,
                    forward: Exchange) -> _Tape:
    """Every layer on the local atoms; before layer k > 0 the ghosts get their owners' rows."""
    num_layers = int(fused.num_layers)
    n_all = species.shape[0]
    with torch.no_grad():  # the embedding depends on species only
        embedded = fused.stage_embedding(species)
        sent0 = fused.stage_up(0, embedded)
    tape = _Tape([None] * num_layers, [None] * num_layers, [], [], [])
    node_feats = embedded[:n_local]
    for layer in range(num_layers):
        if layer == 0:
            sent = sent0
        else:
            tape.feats_in[layer] = node_feats = _leaf(node_feats)
            sent_local = tape.sent_local[layer] = fused.stage_up(layer, node_feats)
            ghosts = sent_local.new_zeros((n_all - n_local, sent_local.shape[1]))
            sent = _leaf(forward(torch.cat([sent_local.detach(), ghosts])))
        tape.sent_all.append(sent)
        node_feats, energy = fused.stage_layer(
            layer, sent, node_feats, species[:n_local], edge_leaves, edge_index, n_local
        )
        tape.feats_out.append(node_feats)
        tape.energies.append(energy)
    return tape


def _backward_layers(tape: _Tape, edge_leaves: List[Tensor], energy_grads: List[Tensor], n_local: int,
                     reverse: Exchange) -> List[Tensor]:
    """One autograd graph per layer, last to first; the gradients on ghost rows go back to
    their owners (reverse exchange) before chaining into the layer below."""
    edge_grads = [torch.zeros_like(t) for t in edge_leaves]
    feats_grad: Optional[Tensor] = None
    for layer in reversed(range(len(tape.energies))):
        outputs, grad_outputs = [tape.energies[layer]], [energy_grads[layer]]
        if feats_grad is not None:
            outputs.append(tape.feats_out[layer])
            grad_outputs.append(feats_grad)
        inputs = list(edge_leaves)
        if layer > 0:
            inputs += [tape.sent_all[layer], tape.feats_in[layer]]
        grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)
        for k, grad in enumerate(grads[: len(edge_leaves)]):
            if grad is not None:
                edge_grads[k] += grad
        if layer == 0:
            break
        sent_grad = reverse(grads[len(edge_leaves)].contiguous())[:n_local]
        through_up = torch.autograd.grad([tape.sent_local[layer]], [tape.feats_in[layer]], [sent_grad])[0]
        direct = grads[len(edge_leaves) + 1]
        feats_grad = through_up if direct is None else through_up + direct
    return edge_grads


def periodic_exchanges(owner: Tensor, n_local: int) -> tuple[Exchange, Exchange]:
    """Exchanges on one rank whose ghosts are periodic images: owner[k] = local atom of row k."""
    owner = owner.long()

    def forward(rows: Tensor) -> Tensor:
        rows = rows.clone()
        rows[n_local:] = rows[owner[n_local:]]
        return rows

    def reverse(rows: Tensor) -> Tensor:
        folded = rows[:n_local].clone()
        folded.index_add_(0, owner[n_local:], rows[n_local:])
        return torch.cat([folded, torch.zeros_like(rows[n_local:])])

    return forward, reverse
