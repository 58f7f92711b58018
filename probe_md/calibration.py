"""Post-hoc calibration of the head's logit: temperature scaling with a bias term.

The bias is needed because the head is trained with a class-balanced loss, which shifts
its logits by the log prior ratio; temperature alone cannot undo a shift.
"""

from __future__ import annotations

import torch


def fit_temperature_and_bias(
    logits: torch.Tensor, is_reliable: torch.Tensor, max_iter: int = 200
) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of sigmoid((logit + bias) / temperature)."""
    logits = logits.detach().double()
    targets = is_reliable.detach().double()
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature, bias], lr=0.1, max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            (logits + bias) / torch.exp(log_temperature), targets
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_temperature.detach()))
    if not (0.01 < temperature < 100.0):
        # A degenerate calibration split (one class, separable) runs away: keep identity.
        return 1.0, 0.0
    return temperature, float(bias.detach())
