"""The DPO core: DPO, cDPO (label smoothing), robust DPO, hinge (SLiC) and IPO.

Notation: r_w = log pi(y_w|x) - log pi_ref(y_w|x), r_l likewise, h = r_w - r_l.
All functions return per-example losses; the engine averages them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "dpo",
    paper="https://arxiv.org/abs/2305.18290",
    summary="Direct Preference Optimization: -log sigma(beta h), optional label smoothing (cDPO)",
)
def dpo(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO (Rafailov et al. 2023): ``L = -(1-eps) log sigma(beta h) - eps log sigma(-beta h)``.

    With the default ``label_smoothing=0`` this is plain DPO, ``-log sigma(beta h)``; with eps > 0 it is
    cDPO (Mitchell 2023), whose optimum is the finite margin ``(1/beta) log((1-eps)/eps)``.
    Matches TRL ``loss_type="sigmoid"`` for eps = 0 (TRL 1.16's DPOTrainer no longer smooths ``sigmoid``;
    the smoothed form matches TRL's CPO ``sigmoid`` loss applied to the log-ratios).
    """
    positive("dpo", beta=beta)
    check(0.0 <= label_smoothing < 1.0, "dpo", f"label_smoothing must be in [0, 1), got {label_smoothing}")
    r_w, r_l = outputs.logratios("dpo")
    return preference_output(sigmoid_pair_loss(beta * (r_w - r_l), label_smoothing), r_w, r_l, beta)


@register(
    "cdpo",
    paper="https://ericmitchell.ai/cdpo.pdf",
    summary="conservative DPO: DPO with label smoothing eps (default 0.1)",
)
def cdpo(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """cDPO (Mitchell, "A note on DPO with noisy preferences"):
    ``L = -(1-eps) log sigma(beta h) - eps log sigma(-beta h)``; same as ``dpo`` with ``label_smoothing=eps``,
    but with eps = 0.1 by default."""
    return dpo(outputs, beta=beta, label_smoothing=label_smoothing)


@register(
    "robust",
    paper="https://arxiv.org/abs/2403.00409",
    summary="robust DPO (unbiased under label-flip rate eps)",
)
def robust(outputs: PreferenceOutputs, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024):
    ``L = [-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)``, eps in [0, 0.5).

    Matches TRL ``loss_type="robust"``. eps = 0 is plain DPO.
    """
    positive("robust", beta=beta)
    check(0.0 <= label_smoothing < 0.5, "robust", f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    r_w, r_l = outputs.logratios("robust")
    z = beta * (r_w - r_l)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return preference_output(losses, r_w, r_l, beta)


@register(
    "hinge",
    paper="https://arxiv.org/abs/2305.10425",
    summary="SLiC-style hinge: max(0, 1 - beta h)",
)
def hinge(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """Hinge / SLiC (Zhao et al. 2023): ``L = max(0, 1 - beta h)``. Matches TRL ``loss_type="hinge"``."""
    positive("hinge", beta=beta)
    r_w, r_l = outputs.logratios("hinge")
    return preference_output(torch.relu(1.0 - beta * (r_w - r_l)), r_w, r_l, beta)


def _ipo(outputs: PreferenceOutputs, beta: float, length_normalized: bool, name: str) -> LossOutput:
    positive(name, beta=beta)
    r_w, r_l = outputs.logratios(name)
    if length_normalized:
        len_w, len_l = outputs.require_lengths(name)
        delta = r_w / len_w - r_l / len_l
    else:
        delta = r_w - r_l
    losses = (delta - 1.0 / (2.0 * beta)) ** 2
    return preference_output(losses, r_w, r_l, beta, metrics={"ipo/delta": delta.detach().mean()})


@register(
    "ipo",
    paper="https://arxiv.org/abs/2310.12036",
    summary="IPO: (h - 1/(2 beta))^2, token-averaged log-ratios by default (TRL's form)",
)
def ipo(outputs: PreferenceOutputs, *, beta: float = 0.1, length_normalized: bool = True) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17): ``L = (delta - 1/(2 tau))^2`` with ``tau = beta``.

    ``length_normalized=True`` (default): ``delta = r_w/|y_w| - r_l/|y_l|`` (each log-ratio divided by its
    response token count), the form TRL uses after checking with the IPO authors that the paper's results
    use it; matches TRL ``loss_type="ipo"``. ``length_normalized=False``: ``delta = h`` (summed log-ratios,
    the formula as printed), also available as the loss ``ipo-sum``.
    At step 0 (policy == reference) both give ``(1/(2 beta))^2``.
    """
    return _ipo(outputs, beta, bool(length_normalized), "ipo")


@register(
    "ipo-sum",
    paper="https://arxiv.org/abs/2310.12036",
    summary="IPO with summed (not token-averaged) log-ratios: (h - 1/(2 beta))^2",
)
def ipo_sum(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """IPO on summed sequence log-ratios: ``L = (h - 1/(2 beta))^2`` (= ``ipo`` with ``length_normalized=False``)."""
    return _ipo(outputs, beta, False, "ipo-sum")
