"""MADPO: margin-adaptive DPO (Rho 2025, arXiv 2510.05342; official code
sirano1004/Margin-Apative-Direct-Preference-Optimization).

A fixed reward model gives each pair a margin m = r_phi(x, y_w) - r_phi(x, y_l) (data column ``rm_margin``,
raw logit difference, no normalisation). Each pair's DPO loss is reweighted by a detached

    c(|m|) = c_min + (c_max - c_min) / (1 + ((c_max - 1)/(1 - c_min)) exp(lambda (|m| - tau)))
    w(m)   = sigma(c(|m|) m) / sigma(m)   if m > -tau,   else 1
    L      = w(m) * (-log sigma(beta h)).

c goes from ~c_max (small |m|) through exactly 1 at |m| = tau to c_min, so w is continuous at m = -tau;
easy pairs (m >> 0) have w -> 1, hard/ambiguous pairs (m < 0) are down-weighted.
Worked values with the defaults: w(0) = 1, w(1) = 1.20, w(-1) = 0.45, w(-10) = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LossConfigError, LossOutput, PreferenceOutputs
from .registry import register

DEFAULT_TAU = math.log(0.999 / 0.001)


def madpo_weight(
    m: Tensor, *, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = DEFAULT_TAU
) -> Tensor:
    """The MADPO weight w(m) (see module docstring), computed as exp(logsigma(c m) - logsigma(m)); no grad."""
    m = torch.as_tensor(m).detach()
    if not m.is_floating_point():
        m = m.to(torch.get_default_dtype())
    k = (c_max - 1.0) / (1.0 - c_min)
    c = c_min + (c_max - c_min) / (1.0 + k * torch.exp(lam * (m.abs() - tau)))
    w = torch.exp(F.logsigmoid(c * m) - F.logsigmoid(m))
    return torch.where(m > -tau, w, torch.ones_like(w))


@register(
    "madpo",
    paper="https://arxiv.org/abs/2510.05342",
    summary="DPO reweighted per pair by a reward-model-margin weight w(m) (needs column rm_margin)",
    needs_extras=("rm_margin",),
)
def madpo(
    outputs: PreferenceOutputs,
    *,
    beta: float = 0.1,
    c_max: float = 2.0,
    c_min: float = 0.5,
    lam: float = 1.0,
    tau: float = DEFAULT_TAU,
) -> LossOutput:
    """MADPO: ``L = w(m) * (-log sigma(beta h))`` with ``m = extras["rm_margin"]`` and w from :func:`madpo_weight`
    (paper settings beta 0.1, c_max 2, c_min 0.5, lambda 1, tau ln(0.999/0.001))."""
    positive("madpo", beta=beta, lam=lam, tau=tau)
    check(c_min < 1.0 < c_max, "madpo", f"need c_min < 1 < c_max, got c_min={c_min}, c_max={c_max}")
    if "rm_margin" not in outputs.extras or outputs.extras["rm_margin"] is None:
        raise LossConfigError(
            "loss 'madpo' needs the per-pair reward-model margin column 'rm_margin' "
            "(r_phi(x, y_w) - r_phi(x, y_l)); add it to the data (e.g. score pairs with a trained reward model)"
        )
    r_w, r_l = outputs.logratios("madpo")
    m = torch.as_tensor(outputs.extras["rm_margin"]).to(device=r_w.device, dtype=r_w.dtype).reshape(-1)
    if m.shape[0] != r_w.shape[0]:
        raise LossConfigError(f"loss 'madpo': rm_margin has {m.shape[0]} values for a batch of {r_w.shape[0]} pairs")
    if not torch.isfinite(m).all():
        raise LossConfigError("loss 'madpo': rm_margin contains NaN/inf; every pair needs a finite reward-model margin")
    w = madpo_weight(m, c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    losses = w * sigmoid_pair_loss(beta * (r_w - r_l))
    metrics = {"weight/mean": w.mean(), "weight/min": w.min(), "weight/max": w.max()}
    return preference_output(losses, r_w, r_l, beta, metrics=metrics)
