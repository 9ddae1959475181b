"""ORPO: monolithic odds-ratio preference optimisation (Hong et al. 2024, arXiv 2403.07691)."""

from __future__ import annotations

import torch.nn.functional as F

from ._common import check, log1mexp, preference_output
from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "orpo",
    paper="https://arxiv.org/abs/2403.07691",
    summary="reference-free: NLL(y_w) - lambda log sigma(log odds(y_w) - log odds(y_l))",
    needs_reference=False,
)
def orpo(outputs: PreferenceOutputs, *, lam: float = 0.1) -> LossOutput:
    """ORPO: ``L = NLL(y_w) - lambda log sigma(log odds(y_w) - log odds(y_l))``, per example.

    P = exp(mean token log-prob) (``policy_*_logps / lengths``), odds = P/(1-P), so
    ``log odds = logp - log(1 - exp(logp))`` computed with a stable log1mexp. NLL(y_w) is the token-mean
    NLL of the chosen response. ``lam`` is the paper's lambda (default 0.1; TRL's ORPO calls it ``beta``).
    Matches TRL's ``ORPOTrainer`` (``loss = nll - mean(beta * logsigmoid(log_odds))``) when the chosen
    responses have equal lengths (TRL's NLL is a batch token mean). Rewards are ``lam * mean log-prob``.
    """
    check(lam >= 0, "orpo", f"lam must be >= 0, got {lam}")
    len_w, len_l = outputs.require_lengths("orpo")
    avg_w = outputs.policy_chosen_logps / len_w
    avg_l = outputs.policy_rejected_logps / len_l
    log_odds = (avg_w - log1mexp(avg_w)) - (avg_l - log1mexp(avg_l))
    or_loss = -F.logsigmoid(log_odds)
    nll = -avg_w
    metrics = {"nll": nll.detach().mean(), "log_odds": log_odds.detach().mean(), "or_loss": or_loss.detach().mean()}
    return preference_output(nll + lam * or_loss, avg_w, avg_l, lam, metrics=metrics)
