"""Further reference-based losses, formulas as in TRL's DPO trainer (trl 1.16 ``_compute_loss``):
NCA-pair, BCO-pair, APO-zero, APO-down, SPPO-hard, EXO-pair, DiscoPOP, AOT (paired and unpaired).

Notation: r_w, r_l log-ratios (policy - reference), h = r_w - r_l.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import LossOutput, PreferenceOutputs
from ._common import check, positive, preference_output, sigmoid_pair_loss
from .registry import register


@register("nca-pair", paper="https://arxiv.org/abs/2402.05369",
          summary="noise-contrastive alignment, pairwise: -log sig(beta r_w) - .5 log sig(-beta r_w) - .5 log sig(-beta r_l)")
def nca_pair(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """NCA-pair (Chen et al. 2024): ``L = -log s(beta r_w) - 0.5 log s(-beta r_w) - 0.5 log s(-beta r_l)``."""
    positive("nca-pair", beta=beta)
    r_w, r_l = outputs.logratios("nca-pair")
    zw, zl = beta * r_w, beta * r_l
    losses = -F.logsigmoid(zw) - 0.5 * F.logsigmoid(-zw) - 0.5 * F.logsigmoid(-zl)
    return preference_output(losses, r_w, r_l, beta)


@register("bco-pair", paper="https://arxiv.org/abs/2404.04656",
          summary="binary classifier optimisation, pairwise: -log sig(beta r_w) - log sig(-beta r_l)")
def bco_pair(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """BCO-pair (Jung et al. 2024) as in TRL: ``L = -log s(beta r_w) - log s(-beta r_l)`` (no running delta)."""
    positive("bco-pair", beta=beta)
    r_w, r_l = outputs.logratios("bco-pair")
    losses = -F.logsigmoid(beta * r_w) - F.logsigmoid(-beta * r_l)
    return preference_output(losses, r_w, r_l, beta)


@register("apo-zero", paper="https://arxiv.org/abs/2408.06266",
          summary="anchored preference optimisation (chosen better than model): (1 - sig(beta r_w)) + sig(beta r_l)")
def apo_zero(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): ``L = (1 - s(beta r_w)) + s(beta r_l)``."""
    positive("apo-zero", beta=beta)
    r_w, r_l = outputs.logratios("apo-zero")
    losses = (1.0 - torch.sigmoid(beta * r_w)) + torch.sigmoid(beta * r_l)
    return preference_output(losses, r_w, r_l, beta)


@register("apo-down", paper="https://arxiv.org/abs/2408.06266",
          summary="anchored preference optimisation (chosen worse than model): sig(beta r_w) + (1 - sig(beta h))")
def apo_down(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): ``L = s(beta r_w) + (1 - s(beta (r_w - r_l)))``."""
    positive("apo-down", beta=beta)
    r_w, r_l = outputs.logratios("apo-down")
    losses = torch.sigmoid(beta * r_w) + (1.0 - torch.sigmoid(beta * (r_w - r_l)))
    return preference_output(losses, r_w, r_l, beta)


@register("sppo-hard", paper="https://arxiv.org/abs/2405.00675",
          summary="self-play preference optimisation, hard labels: (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2")
def sppo_hard(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """SPPO-hard (Wu et al. 2024): ``L = (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2`` (P = 1 winner, 0 loser)."""
    positive("sppo-hard", beta=beta)
    r_w, r_l = outputs.logratios("sppo-hard")
    t = 0.5 / beta
    return preference_output((r_w - t) ** 2 + (r_l + t) ** 2, r_w, r_l, beta)


@register("exo-pair", paper="https://arxiv.org/abs/2402.00856",
          summary="efficient exact optimisation, pairwise: KL(softmax(beta r) || [1-eps, eps])")
def exo_pair(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> LossOutput:
    """EXO-pair (Ji et al. 2024, Eq. 16): with q_w = s(beta h), q_l = s(-beta h),

        L = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps),  0 < eps < 1 (default 1e-3, the paper's).
    """
    positive("exo-pair", beta=beta)
    check(0.0 < label_smoothing < 1.0, "exo-pair", f"label_smoothing must be in (0, 1), got {label_smoothing}")
    r_w, r_l = outputs.logratios("exo-pair")
    z = beta * (r_w - r_l)
    eps = label_smoothing
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    return preference_output(losses, r_w, r_l, beta)


@register("discopop", paper="https://arxiv.org/abs/2406.08414",
          summary="DiscoPOP log-ratio modulated loss: blend of logistic and exponential loss")
def discopop(outputs: PreferenceOutputs, *, beta: float = 0.1, tau: float = 0.05) -> LossOutput:
    """DiscoPOP (Chris Lu et al. 2024, Eq. 5): with z = beta h and m = s(z / tau),
    ``L = (1 - m) (-log s(z)) + m exp(-z)``. Default tau 0.05 (the paper's, TRL ``discopop_tau``).

    Computed as ``s(-z/tau) (-log s(z)) + exp(log s(z/tau) - z)``: the same value, but where m underflows to 0 while
    exp(-z) overflows (z <= -88.7 in float32) the product is exp(log s(z/tau) - z), which for tau < 1 goes to 0
    instead of 0 * inf = NaN."""
    positive("discopop", beta=beta, tau=tau)
    r_w, r_l = outputs.logratios("discopop")
    z = beta * (r_w - r_l)
    losses = torch.sigmoid(-z / tau) * (-F.logsigmoid(z)) + torch.exp(F.logsigmoid(z / tau) - z)
    return preference_output(losses, r_w, r_l, beta)


@register("aot", paper="https://arxiv.org/abs/2406.05882",
          summary="alignment via optimal transport, paired: DPO on sorted policy vs sorted reference log-ratios")
def aot(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """AOT, paired (Melnyk et al. 2024): with u = sort_batch(log pi(y_w) - log pi(y_l)) and
    v = sort_batch(log pi_ref(y_w) - log pi_ref(y_l)), ``L_i = -(1-eps) log s(beta (u_i - v_i)) - eps log s(-beta (u_i - v_i))``.
    Per-example losses are per *rank*, not per pair (only their mean is meaningful); batch-level loss."""
    positive("aot", beta=beta)
    ref_w, ref_l = outputs.require_reference("aot")
    u, _ = torch.sort(outputs.policy_chosen_logps - outputs.policy_rejected_logps, dim=0)
    v, _ = torch.sort(ref_w - ref_l, dim=0)
    r_w, r_l = outputs.logratios("aot")
    return preference_output(sigmoid_pair_loss(beta * (u - v), label_smoothing), r_w, r_l, beta)


@register("aot-unpaired", paper="https://arxiv.org/abs/2406.05882",
          summary="alignment via optimal transport, unpaired: DPO on sorted r_w vs sorted r_l")
def aot_unpaired(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """AOT, unpaired: ``L_i = -(1-eps) log s(beta (sort(r_w)_i - sort(r_l)_i)) - eps log s(-...)``; batch-level."""
    positive("aot-unpaired", beta=beta)
    r_w, r_l = outputs.logratios("aot-unpaired")
    sw, _ = torch.sort(r_w, dim=0)
    sl, _ = torch.sort(r_l, dim=0)
    return preference_output(sigmoid_pair_loss(beta * (sw - sl), label_smoothing), r_w, r_l, beta)
