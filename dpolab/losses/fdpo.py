"""f-DPO: DPO under other f-divergence constraints than reverse KL (Wang et al. 2023, arXiv 2309.16240).

With the constraint D_f(pi || pi_ref), the optimal policy's implicit reward is beta f'(u) with u = pi/pi_ref, so
DPO's log-ratios r = log u are replaced by scores s = f'(u) before the sigmoid:

    L = -log sigma(beta (s(r_w) - s(r_l))),

    reverse_kl         s = r                              (DPO)
    forward_kl         s = 1 - exp(-r)                     (f'(u) = 1 - 1/u)
    js_divergence      s = log 2 + log sigma(r)            (f'(u) = log(2u / (1 + u)))
    alpha_divergence   s = (1 - exp(-alpha r)) / alpha     (f'(u) = (1 - u^-alpha) / alpha, 0 < alpha < 1)

alpha follows the paper (and TRL's documentation, "the u^-alpha regularizer"): alpha -> 0 is reverse KL,
alpha = 1 is forward KL. TRL 1.16's code computes (u^(c-1) - 1)/(c-1) for ``f_alpha_divergence_coef`` = c, which
is this score at alpha = 1 - c: the two agree at the default 0.5; elsewhere TRL's c is our 1 - alpha.
Every score is 0 at r = 0, so every divergence gives ln 2 at step 0 (policy == reference).

Exponentials are taken of at most 80 (11 in float16; less for a tiny alpha, so exp(cap)/alpha fits the dtype), TRL's
cap for the alpha-divergence, applied to the forward KL too (TRL does not cap it): scores stay finite in every dtype;
below r = -cap/alpha the score, and its gradient, are flat. A squared loss of such a score (IPO with the forward-KL
or alpha divergences) can still overflow float32 for log-ratios below about -44, as it does in TRL.

:class:`FDivergence` is the transform (also usable on DPO-like losses via a spec's ``divergence:`` key: the
f-DPO reparameterisation only holds where the loss depends on the chosen-rejected score difference, TRL's rule);
the loss ``fdpo`` is DPO on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import positive, preference_output, sigmoid_pair_loss
from .base import LossConfigError, LossInfo, LossOutput, PreferenceOutputs
from .registry import register

DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# Losses built on the chosen-rejected difference of the log-ratios, which a ``divergence:`` key may transform
# (TRL's list: sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop), plus WPO (DPO weighted per pair).
F_DIVERGENCE_LOSSES = (
    "dpo",
    "cdpo",
    "robust",
    "hinge",
    "ipo",
    "ipo-sum",
    "exo-pair",
    "discopop",
    "sigmoid-norm",
    "wpo",
)
_KEYS = ("type", "alpha")


def _exp_cap(dtype: torch.dtype, alpha: float) -> float:
    """TRL's cap on the exponent (80; 11 in float16), lowered where exp(cap) / alpha would not fit the dtype."""
    base = 11.0 if dtype == torch.float16 else 80.0
    return min(base, math.log(torch.finfo(dtype).max * alpha) - 1.0)


@dataclass(frozen=True)
class FDivergence:
    """A validated f-divergence: ``type`` in :data:`DIVERGENCES`; ``alpha`` in [0, 1] (alpha-divergence only)."""

    type: str = "reverse_kl"
    alpha: float = 0.5

    @classmethod
    def build(cls, divergence: Any = "reverse_kl", alpha: Any = 0.5, who: str = "divergence") -> "FDivergence":
        key = divergence.strip().lower().replace("-", "_") if isinstance(divergence, str) else None
        if key not in DIVERGENCES:
            raise LossConfigError(f"{who}: unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
        ok = (
            isinstance(alpha, (int, float))
            and not isinstance(alpha, bool)
            and math.isfinite(alpha)
            and 0.0 <= alpha <= 1.0
        )
        if not ok:
            raise LossConfigError(
                f"{who}: alpha must be a number in [0, 1] (0 = reverse KL, 1 = forward KL), got {alpha!r}"
            )
        return cls(type=key, alpha=float(alpha))

    @classmethod
    def parse(cls, raw: Any, info: LossInfo) -> "FDivergence":
        """From a spec's ``divergence`` value: a name, or ``{type: alpha_divergence, alpha: 0.3}``."""
        if info.name == "fdpo":
            raise LossConfigError(
                "loss 'fdpo' takes its divergence in params (divergence, alpha), not a 'divergence' key"
            )
        if info.name not in F_DIVERGENCE_LOSSES:
            raise LossConfigError(
                f"a divergence applies to losses built on the chosen-rejected log-ratio difference "
                f"({', '.join(F_DIVERGENCE_LOSSES)}); not to '{info.name}'"
            )
        who = f"loss '{info.name}'"
        if isinstance(raw, FDivergence):
            return raw
        if isinstance(raw, str):
            return cls.build(raw, 0.5, who)
        if not isinstance(raw, Mapping):
            raise LossConfigError(
                f"{who}: divergence must be a name or a mapping with keys {list(_KEYS)}, got {type(raw).__name__}"
            )
        extra = sorted(set(raw) - set(_KEYS))
        if extra:
            raise LossConfigError(f"{who}: divergence has unknown key(s) {extra}; valid: {list(_KEYS)}")
        if "type" not in raw:
            raise LossConfigError(f"{who}: divergence is missing 'type' (one of {', '.join(DIVERGENCES)})")
        return cls.build(raw["type"], raw.get("alpha", 0.5), who)

    def scores(self, r: Tensor) -> Tensor:
        """f'(exp(r)) elementwise (module docstring), differentiable."""
        if self.type == "reverse_kl":
            return r
        if self.type == "js_divergence":
            return math.log(2.0) + F.logsigmoid(r)
        a = 1.0 if self.type == "forward_kl" else self.alpha
        if a < 1e-6:  # alpha -> 0: (1 - u^-alpha)/alpha -> log u
            return r
        return -torch.expm1((-a * r).clamp(max=_exp_cap(r.dtype, a))) / a

    def apply(self, outputs: PreferenceOutputs, who: str = "divergence") -> PreferenceOutputs:
        """``outputs`` whose log-ratios are the scores: policy log-probs := s(r), reference := 0 (exact, no
        rounding)."""
        r_w, r_l = outputs.logratios(who)
        zero = torch.zeros_like(r_w.detach())
        return outputs.replace(
            policy_chosen_logps=self.scores(r_w),
            policy_rejected_logps=self.scores(r_l),
            ref_chosen_logps=zero,
            ref_rejected_logps=zero.clone(),
        )


@register(
    "fdpo",
    paper="https://arxiv.org/abs/2309.16240",
    summary="f-DPO: DPO with the log-ratios replaced by f'(pi/pi_ref) (reverse/forward KL, JS, alpha-divergence)",
)
def fdpo(
    outputs: PreferenceOutputs, *, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5
) -> LossOutput:
    """f-DPO: ``L = -log sigma(beta (s(r_w) - s(r_l)))`` with ``s = f'(exp(r))`` of the chosen ``divergence``
    (module docstring): ``reverse_kl`` (the default, = DPO, TRL's default), ``forward_kl``, ``js_divergence``,
    ``alpha_divergence`` with ``alpha`` in [0, 1] (paper convention; TRL 1.16's ``f_alpha_divergence_coef`` is
    1 - alpha, equal at the default 0.5). Matches TRL ``loss_type="sigmoid"`` with ``f_divergence_type``.
    At step 0 it is ln 2 for every divergence. Rewards are ``beta * r`` (the log-ratios, as TRL logs them)."""
    positive("fdpo", beta=beta)
    div = FDivergence.build(divergence, alpha, "loss 'fdpo'")
    r_w, r_l = outputs.logratios("fdpo")
    s_w, s_l = div.scores(r_w), div.scores(r_l)
    return preference_output(
        sigmoid_pair_loss(beta * (s_w - s_l)), r_w, r_l, beta, metrics={"fdpo/score_margin": (s_w - s_l).mean()}
    )
