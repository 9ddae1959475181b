"""SimPO: simple, reference-free preference optimisation (Meng et al. 2024, arXiv 2405.14734)."""

from __future__ import annotations

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "simpo",
    paper="https://arxiv.org/abs/2405.14734",
    summary="reference-free: -log sigma(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma)",
    needs_reference=False,
)
def simpo(
    outputs: PreferenceOutputs, *, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0
) -> LossOutput:
    """SimPO: ``L = -log sigma((beta/|y_w|) log pi(y_w) - (beta/|y_l|) log pi(y_l) - gamma)``.

    Log-probs are token-averaged (length-normalised); no reference model. Defaults beta 2.0, gamma 1.0
    (the paper's Mistral/Llama-base setting, gamma/beta = 0.5). Optional label smoothing as in TRL's CPO
    trainer. Matches TRL ``CPOTrainer`` with ``loss_type="simpo"``, ``simpo_gamma=gamma``, ``cpo_alpha=0``.
    Rewards are ``beta * avg log pi``.
    """
    positive("simpo", beta=beta)
    check(0.0 <= label_smoothing < 1.0, "simpo", f"label_smoothing must be in [0, 1), got {label_smoothing}")
    len_w, len_l = outputs.require_lengths("simpo")
    avg_w = outputs.policy_chosen_logps / len_w
    avg_l = outputs.policy_rejected_logps / len_l
    losses = sigmoid_pair_loss(beta * (avg_w - avg_l) - gamma, label_smoothing)
    return preference_output(losses, avg_w, avg_l, beta)
