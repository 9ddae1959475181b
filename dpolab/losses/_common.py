"""Small helpers shared by the loss modules (no loss is registered here).

Keeping the repeated pieces in one place means each formula is written once:
``sigmoid_pair_loss`` is the (label-smoothed) ``-log sigma(z)`` used by DPO, cDPO, beta-DPO, MADPO,
DPOP, SimPO and AOT; ``preference_output`` builds a :class:`LossOutput` with detached implicit rewards
and the two reward metrics every pairwise loss reports.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LossConfigError, LossOutput


def sigmoid_pair_loss(z: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``-(1 - eps) log sigma(z) - eps log sigma(-z)``; plain ``-log sigma(z)`` when eps = 0."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def log1mexp(x: Tensor) -> Tensor:
    """Stable ``log(1 - exp(x))`` for x < 0 (Maechler 2012): expm1 branch near 0, log1p branch far from it.

    x is clamped to ``<= -1e-6`` so a log-prob of exactly 0 gives a large finite value instead of -inf.
    """
    x = x.clamp(max=-1e-6)
    near = x > -math.log(2.0)
    return torch.where(
        near, torch.log(-torch.expm1(torch.where(near, x, -1.0))), torch.log1p(-torch.exp(torch.where(near, -1.0, x)))
    )


def check(cond: bool, loss: str, message: str) -> None:
    if not cond:
        raise LossConfigError(f"loss '{loss}': {message}")


def positive(loss: str, **values: float) -> None:
    for k, v in values.items():
        check(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
            loss,
            f"{k} must be a positive number, got {v!r}",
        )


def preference_output(
    losses: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    beta: float,
    metrics: Optional[Dict[str, Any]] = None,
    mask: Optional[Tensor] = None,
) -> LossOutput:
    """Wrap per-example ``losses`` with rewards ``beta * chosen`` / ``beta * rejected`` (detached).

    ``chosen``/``rejected`` are the loss's implicit-reward log-ratios (or, for reference-free losses,
    the log-probs that play that role). Adds ``rewards/margin`` (mean of beta * (chosen - rejected))
    and ``rewards/accuracy`` (fraction with chosen > rejected).
    """
    cw = beta * chosen.detach()
    rl = beta * rejected.detach()
    out = {
        "rewards/margin": (cw - rl).mean(),
        "rewards/accuracy": (chosen.detach() > rejected.detach()).to(losses.dtype).mean(),
    }
    if metrics:
        out.update({k: (v.detach() if isinstance(v, Tensor) else v) for k, v in metrics.items()})
    return LossOutput(losses=losses, metrics=out, mask=mask, chosen_rewards=cw, rejected_rewards=rl)
