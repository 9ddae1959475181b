"""Length-aware DPO variants: length-normalised DPO (``sigmoid-norm``) and LD-DPO (length desensitisation).

Notation: r_w = log pi(y_w|x) - log pi_ref(y_w|x), r_l likewise; |y| is a response's token count.

LD-DPO (Liu et al. 2024, arXiv 2409.06411) splits each response of a pair at the shorter one's length
m = min(|y_w|, |y_l|): its first m response tokens are the *shared* part, the rest the *tail* (the verbose excess
of the longer response; the shorter one has none). A sequence log-prob becomes

    log p_LD(y) = sum over the shared tokens + alpha * sum over the tail tokens,    0 <= alpha <= 1,

for the policy and the reference alike, and DPO runs on those. alpha = 1 is plain DPO, alpha = 0 drops the tail.
:class:`LDConfig` is the transform (also usable on other reference-based losses through a spec's ``ld_alpha:`` key);
the loss ``ld-dpo`` is DPO on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ._common import positive, preference_output, sigmoid_pair_loss
from .base import LossConfigError, LossInfo, LossOutput, PreferenceOutputs
from .registry import register

DEFAULT_LD_ALPHA = 0.5  # the paper tunes alpha per model and TRL has no default; 0.5 halves the tail's weight


@register(
    "sigmoid-norm",
    paper="https://arxiv.org/abs/2305.18290",
    summary="length-normalised DPO: -log sigma(beta (r_w/|y_w| - r_l/|y_l|)) (TRL's sigmoid_norm)",
)
def sigmoid_norm(outputs: PreferenceOutputs, *, beta: float = 0.1) -> LossOutput:
    """Length-normalised DPO: ``L = -log sigma(beta (r_w/|y_w| - r_l/|y_l|))``, each log-ratio divided by its
    response's token count (as IPO's default form does). Matches TRL ``loss_type="sigmoid_norm"``.
    At step 0 (policy == reference) it is ln 2. Rewards are ``beta * r`` (not length-normalised), as in TRL."""
    positive("sigmoid-norm", beta=beta)
    r_w, r_l = outputs.logratios("sigmoid-norm")
    len_w, len_l = outputs.require_lengths("sigmoid-norm")
    delta = r_w / len_w - r_l / len_l
    return preference_output(
        sigmoid_pair_loss(beta * delta), r_w, r_l, beta, metrics={"sigmoid-norm/delta": delta.mean()}
    )


def shared_tail(tok: Tensor, mask: Tensor, shared: Tensor) -> Tuple[Tensor, Tensor]:
    """(sum of ``tok`` over the first ``shared[i]`` real tokens of row i, sum over its remaining real tokens)."""
    mask = mask.bool()
    pos = mask.long().cumsum(-1)  # 1-based rank of each real token among its row's real tokens
    in_shared = mask & (pos <= shared.unsqueeze(-1))
    in_tail = mask & ~in_shared
    zero = tok.new_zeros(())
    return torch.where(in_shared, tok, zero).sum(-1), torch.where(in_tail, tok, zero).sum(-1)


def _policy_tokens(outputs: PreferenceOutputs, who: str):
    names = ("policy_chosen_token_logps", "chosen_token_mask", "policy_rejected_token_logps", "rejected_token_mask")
    missing = [n for n in names if getattr(outputs, n) is None]
    if missing:
        raise LossConfigError(f"{who} needs the policy's per-token log-probs and masks; missing: {', '.join(missing)}")
    return tuple(getattr(outputs, n) for n in names)


@dataclass(frozen=True)
class LDConfig:
    """LD-DPO's length-desensitising transform of the four sequence log-probs, with tail weight ``alpha``."""

    alpha: float = DEFAULT_LD_ALPHA

    @classmethod
    def build(cls, alpha: Any, who: str = "ld_alpha") -> "LDConfig":
        ok = (
            isinstance(alpha, (int, float))
            and not isinstance(alpha, bool)
            and math.isfinite(alpha)
            and 0.0 <= alpha <= 1.0
        )
        if not ok:
            raise LossConfigError(f"{who} must be a number in [0, 1] (1 = plain DPO, 0 = drop the tail), got {alpha!r}")
        return cls(alpha=float(alpha))

    @classmethod
    def parse(cls, raw: Any, info: LossInfo) -> "LDConfig":
        """From a spec's ``ld_alpha`` value, for a reference-based, pair-by-pair loss."""
        if info.name == "ld-dpo":
            raise LossConfigError("loss 'ld-dpo' already applies LD-DPO; set ld_alpha in its params instead")
        if not info.needs_reference:
            raise LossConfigError(
                f"ld_alpha re-weights policy and reference log-probs; loss '{info.name}' uses no reference"
            )
        if info.batch_level:
            raise LossConfigError(
                f"ld_alpha is not supported for the batch-level loss '{info.name}' (its step-wide statistics are taken "
                "from the untransformed log-probs)"
            )
        return cls.build(raw, f"loss '{info.name}': ld_alpha")

    def apply(self, outputs: PreferenceOutputs, who: str = "ld_alpha") -> Tuple[PreferenceOutputs, Dict[str, Any]]:
        """``outputs`` with policy and reference sequence log-probs replaced by shared + alpha * tail."""
        tc, mc, tr, mr = _policy_tokens(outputs, who)
        shared = torch.minimum(mc.bool().sum(-1), mr.bool().sum(-1))
        a = self.alpha
        sc, tc_tail = shared_tail(tc, mc, shared)
        sr, tr_tail = shared_tail(tr, mr, shared)
        dtype = outputs.policy_chosen_logps.dtype
        ref_c, ref_r = self._reference(outputs, mc, mr, shared, who)
        new = outputs.replace(
            policy_chosen_logps=(sc + a * tc_tail).to(dtype),
            policy_rejected_logps=(sr + a * tr_tail).to(dtype),
            ref_chosen_logps=ref_c.to(dtype),
            ref_rejected_logps=ref_r.to(dtype),
        )
        n_tok = (mc.bool().sum() + mr.bool().sum()).clamp_min(1)
        metrics = {
            "ld/tail_token_frac": ((mc.bool().sum() + mr.bool().sum() - 2 * shared.sum()) / n_tok).detach().float()
        }
        return new, metrics

    def _reference(
        self, outputs: PreferenceOutputs, mc: Tensor, mr: Tensor, shared: Tensor, who: str
    ) -> Tuple[Tensor, Tensor]:
        a = self.alpha
        if outputs.ref_chosen_token_logps is not None and outputs.ref_rejected_token_logps is not None:
            sc, tc = shared_tail(outputs.ref_chosen_token_logps, mc, shared)
            sr, tr = shared_tail(outputs.ref_rejected_token_logps, mr, shared)
            return sc + a * tc, sr + a * tr
        if outputs.ref_chosen_shared_logps is not None and outputs.ref_rejected_shared_logps is not None:
            total_c, total_r = outputs.require_reference(who)
            sc, sr = outputs.ref_chosen_shared_logps, outputs.ref_rejected_shared_logps
            return sc + a * (total_c - sc), sr + a * (total_r - sr)
        raise LossConfigError(
            f"{who} needs the reference's per-token log-probs (ref_chosen_token_logps / ref_rejected_token_logps, "
            "laid out and masked like the policy's) or its log-probs summed over each pair's shared length "
            "min(|y_w|, |y_l|) (ref_chosen_shared_logps / ref_rejected_shared_logps); got neither"
        )


@register(
    "ld-dpo",
    paper="https://arxiv.org/abs/2409.06411",
    summary="length-desensitised DPO: log-probs = shared-length part + ld_alpha * the longer response's tail",
    needs_token_logps=True,
    needs_ref_token_split=True,
)
def ld_dpo(outputs: PreferenceOutputs, *, beta: float = 0.1, ld_alpha: float = DEFAULT_LD_ALPHA) -> LossOutput:
    """LD-DPO: ``L = -log sigma(beta (r_w^LD - r_l^LD))`` with ``log p^LD(y) = shared + ld_alpha * tail`` for policy
    and reference (module docstring). Needs per-token policy log-probs and masks, and the reference's per-token
    log-probs or its shared-length sums. Matches TRL ``ld_alpha`` with ``loss_type="sigmoid"``. Default
    ld_alpha 0.5 (a choice: the paper tunes it per model). ld_alpha = 1 is DPO; at step 0 the loss is ln 2.
    Rewards are ``beta`` times the LD log-ratios, as in TRL."""
    positive("ld-dpo", beta=beta)
    ld = LDConfig.build(ld_alpha, "loss 'ld-dpo': ld_alpha")
    inp, metrics = ld.apply(outputs, "loss 'ld-dpo'")
    r_w, r_l = inp.logratios("ld-dpo")
    return preference_output(sigmoid_pair_loss(beta * (r_w - r_l)), r_w, r_l, beta, metrics=metrics)
