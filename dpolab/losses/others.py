"""Further reference-based losses, formulas as in TRL's DPO trainer (trl 1.16 ``_compute_loss``):
NCA-pair, BCO-pair, APO-zero, APO-down, SPPO-hard, EXO-pair, DiscoPOP, AOT (paired and unpaired).

Notation: r_w, r_l log-ratios (policy - reference), h = r_w - r_l.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LOCAL, DistContext, LossOutput, PreferenceOutputs
from .registry import register


@register(
    "nca-pair",
    paper="https://arxiv.org/abs/2402.05369",
    summary="noise-contrastive alignment, pairwise: -log sig(beta r_w) - .5 log sig(-beta r_w) - .5 log sig(-beta r_l)",
)
def nca_pair(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """NCA-pair (Chen et al. 2024): ``L = -log s(beta r_w) - 0.5 log s(-beta r_w) - 0.5 log s(-beta r_l)``."""
    positive("nca-pair", beta=beta)
    r_w, r_l = outputs.logratios("nca-pair")
    zw, zl = beta * r_w, beta * r_l
    losses = -F.logsigmoid(zw) - 0.5 * F.logsigmoid(-zw) - 0.5 * F.logsigmoid(-zl)
    return preference_output(losses, r_w, r_l, beta)


@register(
    "bco-pair",
    paper="https://arxiv.org/abs/2404.04656",
    summary="binary classifier optimisation, pairwise: -log sig(beta r_w) - log sig(-beta r_l)",
)
def bco_pair(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """BCO-pair (Jung et al. 2024) as in TRL: ``L = -log s(beta r_w) - log s(-beta r_l)`` (no running delta)."""
    positive("bco-pair", beta=beta)
    r_w, r_l = outputs.logratios("bco-pair")
    losses = -F.logsigmoid(beta * r_w) - F.logsigmoid(-beta * r_l)
    return preference_output(losses, r_w, r_l, beta)


@register(
    "apo-zero",
    paper="https://arxiv.org/abs/2408.06266",
    summary="anchored preference optimisation (chosen better than model): (1 - sig(beta r_w)) + sig(beta r_l)",
)
def apo_zero(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): ``L = (1 - s(beta r_w)) + s(beta r_l)``."""
    positive("apo-zero", beta=beta)
    r_w, r_l = outputs.logratios("apo-zero")
    losses = (1.0 - torch.sigmoid(beta * r_w)) + torch.sigmoid(beta * r_l)
    return preference_output(losses, r_w, r_l, beta)


@register(
    "apo-down",
    paper="https://arxiv.org/abs/2408.06266",
    summary="anchored preference optimisation (chosen worse than model): sig(beta r_w) + (1 - sig(beta h))",
)
def apo_down(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): ``L = s(beta r_w) + (1 - s(beta (r_w - r_l)))``."""
    positive("apo-down", beta=beta)
    r_w, r_l = outputs.logratios("apo-down")
    losses = torch.sigmoid(beta * r_w) + (1.0 - torch.sigmoid(beta * (r_w - r_l)))
    return preference_output(losses, r_w, r_l, beta)


@register(
    "sppo-hard",
    paper="https://arxiv.org/abs/2405.00675",
    summary="self-play preference optimisation, hard labels: (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2",
)
def sppo_hard(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """SPPO-hard (Wu et al. 2024): ``L = (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2`` (P = 1 winner, 0 loser)."""
    positive("sppo-hard", beta=beta)
    r_w, r_l = outputs.logratios("sppo-hard")
    t = 0.5 / beta
    return preference_output((r_w - t) ** 2 + (r_l + t) ** 2, r_w, r_l, beta)


@register(
    "exo-pair",
    paper="https://arxiv.org/abs/2402.00856",
    summary="efficient exact optimisation, pairwise: KL(softmax(beta r) || [1-eps, eps])",
)
def exo_pair(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> LossOutput:
    """EXO-pair (Ji et al. 2024, Eq. 16): with q_w = s(beta h), q_l = s(-beta h),

    L = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps),  0 < eps < 1 (default 1e-3, the paper's).
    """
    positive("exo-pair", beta=beta)
    check(0.0 < label_smoothing < 1.0, "exo-pair", f"label_smoothing must be in (0, 1), got {label_smoothing}")
    r_w, r_l = outputs.logratios("exo-pair")
    z = beta * (r_w - r_l)
    eps = label_smoothing
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return preference_output(losses, r_w, r_l, beta)


@register(
    "discopop",
    paper="https://arxiv.org/abs/2406.08414",
    summary="DiscoPOP log-ratio modulated loss: blend of logistic and exponential loss",
)
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


def _ranks(values: Tensor) -> Tensor:
    """The position of each value in ascending (stable) sorted order."""
    order = torch.sort(values, dim=0, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(values.numel(), device=values.device)
    return ranks


@register(
    "aot",
    paper="https://arxiv.org/abs/2406.05882",
    batch_level=True,
    summary="alignment via optimal transport, paired: DPO on sorted policy vs sorted reference log-ratios",
)
def aot(
    outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.0, dist: DistContext = LOCAL
) -> LossOutput:
    """AOT, paired (Melnyk et al. 2024): with u = sort_batch(log pi(y_w) - log pi(y_l)) and
    v = sort_batch(log pi_ref(y_w) - log pi_ref(y_l)), ``L_k = -(1-eps) log s(beta (u_k - v_k)) - eps log s(-...)``.
    The sort runs over the whole optimiser step (``dist``: every micro-batch and process); this call's pair with
    policy rank k gets term k, so the terms of all calls add up to the step's. Batch-level loss."""
    positive("aot", beta=beta)
    ref_w, ref_l = outputs.require_reference("aot")
    u = outputs.policy_chosen_logps - outputs.policy_rejected_logps
    big_u, own = dist.global_values(u, lambda o: o.policy_chosen_logps - o.policy_rejected_logps)
    big_v, _ = dist.global_values(ref_w - ref_l, lambda o: o.ref_chosen_logps - o.ref_rejected_logps)
    v_sorted = torch.sort(big_v.to(u.device, u.dtype), dim=0).values
    v_k = v_sorted[_ranks(big_u.to(u.device))[own]]
    r_w, r_l = outputs.logratios("aot")
    return preference_output(sigmoid_pair_loss(beta * (u - v_k), label_smoothing), r_w, r_l, beta)


@register(
    "aot-unpaired",
    paper="https://arxiv.org/abs/2406.05882",
    batch_level=True,
    summary="alignment via optimal transport, unpaired: DPO on sorted r_w vs sorted r_l",
)
def aot_unpaired(
    outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.0, dist: DistContext = LOCAL
) -> LossOutput:
    """AOT, unpaired: ``L_k = -(1-eps) log s(beta (sort(r_w)_k - sort(r_l)_k)) - eps log s(-...)`` over the whole
    optimiser step (``dist``). Term k takes its r_w from one pair and its r_l from another, so each pair i (with r_w
    rank a and r_l rank c) contributes ``f(r_w,i - sg(sl_a)) + f(sg(sw_c) - r_l,i) - sg(f(sw_c - sl_c))``: over the
    step these add up to the sum of the terms, and each r_w, r_l gets exactly its term's gradient. Batch-level."""
    positive("aot-unpaired", beta=beta)
    r_w, r_l = outputs.logratios("aot-unpaired")
    big_w, own = dist.global_values(r_w, _logratio_w)
    big_l, _ = dist.global_values(r_l, _logratio_l)
    sw = torch.sort(big_w.to(r_w.device, r_w.dtype), dim=0).values
    sl = torch.sort(big_l.to(r_l.device, r_l.dtype), dim=0).values
    a, c = _ranks(big_w.to(r_w.device))[own], _ranks(big_l.to(r_l.device))[own]
    f = lambda x: sigmoid_pair_loss(beta * x, label_smoothing)  # noqa: E731
    losses = f(r_w - sl[a]) + f(sw[c] - r_l) - f(sw[c] - sl[c]).detach()
    return preference_output(losses, r_w, r_l, beta)


def _logratio_w(o: PreferenceOutputs) -> Tensor:
    return o.logratios("aot-unpaired")[0]


def _logratio_l(o: PreferenceOutputs) -> Tensor:
    return o.logratios("aot-unpaired")[1]
