"""The SFT / NLL term (RPO, Pang et al. 2024, arXiv 2404.19733), used as a second weighted loss."""

from __future__ import annotations

from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "sft",
    paper="https://arxiv.org/abs/2404.19733",
    summary="token-mean negative log-likelihood of the chosen response",
    needs_reference=False,
)
def sft(outputs: PreferenceOutputs) -> LossOutput:
    """``L = -log pi(y_w|x) / |y_w|`` per example (token-mean NLL of the chosen response).

    Combine with a preference loss as a weighted list, e.g. ``[{name: dpo}, {name: sft, weight: 0.2}]``
    (RPO's ``alpha`` is the weight). Note: TRL's ``loss_type="sft"`` averages over all chosen tokens of the
    batch instead of per example; the two agree when all chosen responses have the same length.
    """
    len_w, _ = outputs.require_lengths("sft")
    nll = -outputs.policy_chosen_logps / len_w
    return LossOutput(losses=nll, metrics={"nll": nll.detach().mean()})


sft.uses_policy_rejected = False  # Gate-DPO refuses to wrap a loss that never looks at y_l
