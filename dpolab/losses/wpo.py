"""WPO: weighted preference optimisation (Zhou et al. 2024, arXiv 2406.11827).

Off-policy preference pairs are reweighted toward pairs the current policy would itself be likely to produce. Each
response y gets the (aligned, Eq. 2 of the paper) weight

    w(y) = exp( (1/|y|) sum_t [ log pi(y_t | x, y_<t) - log sum_v pi(v | x, y_<t)^2 ] ),

the policy's length-normalised token probability, each token's relative to the distribution's "self-probability"
sum_v p_v^2 (so a flat next-token distribution does not sink the weight); the pair's loss is multiplied by
``w(y_w) * w(y_l)``, detached. Matches TRL's ``use_weighting=True``.

It needs, besides the per-token policy log-probs and masks, the per-token ``log sum_v p_v^2`` the engine computes
from the same logits (``policy_{chosen,rejected}_token_log_sum_sq_probs``, see :class:`PreferenceOutputs`).
:class:`WPOWeighting` wraps any pair-by-pair loss through a spec's ``weighting: wpo`` key; the loss ``wpo`` is DPO
with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping

import torch
from torch import Tensor

from .base import LossConfigError, LossInfo, LossOutput, PreferenceOutputs
from .dpo import dpo
from .registry import register

WEIGHTINGS = ("wpo",)
_SORTING = ("aot", "aot-unpaired")  # a pair's term comes from other pairs: per-pair weights would be misaligned
_FIELDS = (
    "policy_chosen_token_logps",
    "chosen_token_mask",
    "policy_chosen_token_log_sum_sq_probs",
    "policy_rejected_token_logps",
    "rejected_token_mask",
    "policy_rejected_token_log_sum_sq_probs",
)


def _mean_aligned(tok: Tensor, lssp: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    diff = torch.where(m, tok.detach() - lssp.detach().to(tok.dtype), tok.new_zeros(()))
    return diff.sum(-1) / m.sum(-1).clamp_min(1).to(tok.dtype)


@dataclass(frozen=True)
class WPOWeighting:
    """Multiplies each pair's loss by ``w(y_w) w(y_l)`` (module docstring), detached."""

    name: str = "wpo"

    @classmethod
    def parse(cls, raw: Any, info: LossInfo) -> "WPOWeighting":
        """From a spec's ``weighting`` value: ``"wpo"`` or ``{name: wpo}``."""
        if info.name == "wpo":
            raise LossConfigError("loss 'wpo' is already WPO-weighted; drop the 'weighting' key")
        if info.name in _SORTING:
            raise LossConfigError(
                f"weighting is not supported for '{info.name}': it sorts pairs, so a pair's term is not that pair's"
            )
        name = raw.get("name") if isinstance(raw, Mapping) else raw
        if isinstance(raw, Mapping) and set(raw) - {"name"}:
            raise LossConfigError(f"weighting has unknown key(s) {sorted(set(raw) - {'name'})}; valid: ['name']")
        if not isinstance(name, str) or name.strip().lower() not in WEIGHTINGS:
            raise LossConfigError(f"unknown weighting {raw!r}; valid: {', '.join(WEIGHTINGS)}")
        return cls(name=name.strip().lower())

    def weights(self, outputs: PreferenceOutputs, who: str = "weighting 'wpo'") -> Tensor:
        """The pair weights ``w(y_w) w(y_l)`` [B], detached."""
        missing = [f for f in _FIELDS if getattr(outputs, f) is None]
        if missing:
            raise LossConfigError(
                f"{who} needs the policy's per-token log-probs, masks and per-token log sum_v p_v^2 of the next-token "
                f"distribution; missing: {', '.join(missing)}"
            )
        with torch.no_grad():
            mean_w = _mean_aligned(
                outputs.policy_chosen_token_logps,
                outputs.policy_chosen_token_log_sum_sq_probs,
                outputs.chosen_token_mask,
            )
            mean_l = _mean_aligned(
                outputs.policy_rejected_token_logps,
                outputs.policy_rejected_token_log_sum_sq_probs,
                outputs.rejected_token_mask,
            )
            return torch.exp(mean_w + mean_l)

    def apply(self, outputs: PreferenceOutputs, out: LossOutput, who: str = "weighting 'wpo'") -> LossOutput:
        """``out`` with each pair's loss times its weight (mask, rewards and metrics kept; weight metrics added)."""
        w = self.weights(outputs, who).to(device=out.losses.device, dtype=out.losses.dtype)
        metrics: Dict[str, Any] = dict(out.metrics)
        metrics.update({"wpo/weight_mean": w.mean(), "wpo/weight_min": w.min(), "wpo/weight_max": w.max()})
        return LossOutput(
            losses=out.losses * w,
            metrics=metrics,
            mask=out.mask,
            chosen_rewards=out.chosen_rewards,
            rejected_rewards=out.rejected_rewards,
        )


@register(
    "wpo",
    paper="https://arxiv.org/abs/2406.11827",
    summary="DPO with each pair weighted by the policy's aligned length-normalised probability of y_w and y_l "
    "(detached)",
    needs_token_logps=True,
    needs_token_log_sum_sq_probs=True,
)
def wpo(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """WPO-weighted DPO: ``L = w(y_w) w(y_l) * (-log sigma(beta h))`` with ``w(y) = exp(mean_t [log pi(y_t|.) -
    log sum_v pi(v|.)^2])`` detached (module docstring). Matches TRL ``loss_type="sigmoid"`` with
    ``use_weighting=True``. Any other pair-by-pair loss takes the same weight with a spec's ``weighting: wpo``.
    Its step-0 value is the pair weight times ln 2."""
    return WPOWeighting().apply(outputs, dpo(outputs, beta=beta), "loss 'wpo'")
