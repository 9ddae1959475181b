"""DPOP / DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228)."""

from __future__ import annotations

import torch

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "dpop",
    paper="https://arxiv.org/abs/2402.13228",
    summary="DPO-Positive: DPO minus lambda * max(0, log pi_ref(y_w) - log pi(y_w)) inside the sigmoid",
)
def dpop(outputs: PreferenceOutputs, *, beta: float = 0.1, lam: float = 50.0) -> LossOutput:
    """DPOP: ``L = -log sigma(beta h - beta lambda max(0, log pi_ref(y_w|x) - log pi(y_w|x)))``.

    ``lam`` is the paper's lambda (not stated in the public material; 50 is the commonly used value).
    While the chosen log-prob is below the reference, the chosen gradient is scaled by (1 + lambda),
    which stops DPO from lowering log pi(y_w) while raising the margin.
    """
    positive("dpop", beta=beta)
    check(lam >= 0, "dpop", f"lam must be >= 0, got {lam}")
    r_w, r_l = outputs.logratios("dpop")
    penalty = torch.relu(-r_w)  # max(0, log pi_ref(y_w) - log pi(y_w))
    losses = sigmoid_pair_loss(beta * (r_w - r_l - lam * penalty))
    metrics = {"penalty/mean": penalty.detach().mean(), "penalty/active": (penalty.detach() > 0).to(r_w.dtype).mean()}
    return preference_output(losses, r_w, r_l, beta, metrics=metrics)
