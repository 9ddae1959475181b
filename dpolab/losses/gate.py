"""Gate-DPO: gate the gradient through the rejected response (Mouiche 2026, arXiv 2605.02626).

The objective's value is unchanged; only the gradient through ``log pi(y_l)`` is scaled by a detached gate

    g = sigma(alpha (p - tau)),     log pi(y_l) -> sg(log pi(y_l)) + g (log pi(y_l) - sg(log pi(y_l))),

where p is the rejected response's probability level:
  * ``"seq"``: exp(mean token log-prob of y_l) (the geometric-mean token probability), from the per-token
    tensor and mask when present, else from ``policy_rejected_logps / rejected_lengths``;
  * ``"q10"``: the 10th-percentile token probability of y_l (``torch.quantile``, linear interpolation,
    over the real tokens; needs per-token log-probs and mask).

Purpose: stop pushing down a rejected response that is already unlikely (the squeezing effect,
Ren & Sutherland 2025), while leaving DPO untouched on likely rejected responses.

Defaults (alpha and tau are not public; sweep them). p lives in [0, 1]; we want g ~ 1 for rejected
responses the model still finds plausible and g -> 0 once they are clearly unlikely, and g(0) small:
  * ``seq``: tau = 0.1 (mean token log-prob -2.3, roughly where an SFT model's own responses sit on
    their low side), alpha = 30: g(0) = 0.05, g(0.05) = 0.18, g(0.1) = 0.5, g(0.2) = 0.95, g(0.3) = 0.998.
  * ``q10``: the 10th-percentile token probability is an order of magnitude smaller than the geometric
    mean, so the same curve scaled by 10: tau = 0.01, alpha = 300.
A symmetric choice such as tau = 0.5 would shut the gate on almost every real response (typical
geometric-mean token probabilities are 0.05-0.4), turning DPO into a chosen-only objective.

``GateConfig`` wraps any loss that uses ``policy_rejected_logps`` (via a spec's ``gate:`` key); the loss
``gate-dpo`` is DPO with a gate, for convenience.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .base import LossConfigError, LossInfo, LossOutput, PreferenceOutputs
from .dpo import dpo
from .registry import register

MODES: Dict[str, Tuple[float, float]] = {"seq": (30.0, 0.1), "q10": (300.0, 0.01)}  # mode -> (alpha, tau)
_KEYS = ("mode", "alpha", "tau")


def _uses_rejected(info: LossInfo) -> bool:
    return bool(getattr(info.fn, "uses_policy_rejected", True))


@dataclass(frozen=True)
class GateConfig:
    """A validated gate: ``mode`` in {"seq", "q10"}, slope ``alpha`` > 0, threshold ``tau`` (a probability)."""

    mode: str = "seq"
    alpha: float = MODES["seq"][0]
    tau: float = MODES["seq"][1]

    @classmethod
    def build(cls, mode: str = "seq", alpha: Optional[float] = None, tau: Optional[float] = None) -> "GateConfig":
        """Validate and fill mode-specific defaults for ``alpha``/``tau`` left as None."""
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise LossConfigError(f"unknown gate mode {mode!r}; valid modes: {', '.join(MODES)}")
        mode = mode.strip().lower()
        d_alpha, d_tau = MODES[mode]
        alpha = d_alpha if alpha is None else alpha
        tau = d_tau if tau is None else tau
        try:
            alpha, tau = float(alpha), float(tau)
        except (TypeError, ValueError):
            raise LossConfigError(f"gate alpha and tau must be numbers, got alpha={alpha!r}, tau={tau!r}") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise LossConfigError(f"gate alpha must be a positive number, got {alpha}")
        if not math.isfinite(tau):
            raise LossConfigError(f"gate tau must be finite, got {tau}")
        return cls(mode=mode, alpha=alpha, tau=tau)

    @classmethod
    def parse(cls, raw: Union[str, bool, Mapping[str, Any], "GateConfig"], info: LossInfo) -> "GateConfig":
        """From a spec's ``gate`` value: ``"seq"``/``"q10"``, ``True`` (= "seq") or ``{mode, alpha, tau}``."""
        if info.name == "gate-dpo":
            raise LossConfigError(
                "loss 'gate-dpo' is already gated; set mode/alpha/tau in its params instead of 'gate'"
            )
        if not _uses_rejected(info):
            raise LossConfigError(
                f"loss '{info.name}' does not use the rejected response's log-prob, so a gate has nothing to act on"
            )
        if isinstance(raw, GateConfig):
            return raw
        if raw is True:
            return cls.build()
        if isinstance(raw, str):
            return cls.build(raw)
        if not isinstance(raw, Mapping):
            raise LossConfigError(
                f"gate must be a mode name or a mapping with keys {list(_KEYS)}, got {type(raw).__name__}"
            )
        extra = sorted(set(raw) - set(_KEYS))
        if extra:
            raise LossConfigError(f"gate has unknown key(s) {extra}; valid: {list(_KEYS)}")
        return cls.build(raw.get("mode", "seq"), raw.get("alpha"), raw.get("tau"))

    # -- the transform -------------------------------------------------------------------------
    def level(self, outputs: PreferenceOutputs) -> Tensor:
        """The rejected response's probability level p [B] (detached)."""
        tok, mask = outputs.policy_rejected_token_logps, outputs.rejected_token_mask
        if self.mode == "seq":
            if tok is not None and mask is not None:
                m = mask.to(tok.dtype)
                mean = (tok.detach() * m).sum(-1) / m.sum(-1).clamp_min(1.0)
            else:
                if outputs.rejected_lengths is None:
                    raise LossConfigError("gate 'seq' needs per-token rejected log-probs + mask, or rejected_lengths")
                mean = outputs.policy_rejected_logps.detach() / outputs.rejected_lengths.to(
                    outputs.policy_rejected_logps.dtype
                ).clamp_min(1)
            return mean.exp()
        if tok is None or mask is None:
            raise LossConfigError(
                "gate 'q10' needs per-token rejected log-probs (policy_rejected_token_logps) and rejected_token_mask"
            )
        probs = tok.detach().exp()
        rows = []
        for i in range(probs.shape[0]):
            vals = probs[i][mask[i].bool()]
            # no real token: no gradient flows anyway; p = 1 keeps the gate open
            rows.append(torch.quantile(vals.double(), 0.1).to(probs.dtype) if vals.numel() else probs.new_ones(()))
        return torch.stack(rows)

    def apply(self, outputs: PreferenceOutputs) -> Tuple[PreferenceOutputs, Dict[str, Any]]:
        """Return outputs with the gated ``policy_rejected_logps`` (same values) and gate metrics.

        The per-token ``policy_rejected_token_logps``, when present, is gated the same way (row i by g_i), so a
        loss that builds its rejected log-prob from the tokens (``ld-dpo``) is gated too."""
        x = outputs.policy_rejected_logps
        p = self.level(outputs).to(device=x.device, dtype=x.dtype)
        g = torch.sigmoid(self.alpha * (p - self.tau)).detach()
        frozen = x.detach()
        gated = frozen + g * (x - frozen)  # value exactly x (x - sg(x) is exactly 0); gradient g
        changes: Dict[str, Any] = {"policy_rejected_logps": gated}
        tok = outputs.policy_rejected_token_logps
        if tok is not None:
            t_frozen = tok.detach()
            changes["policy_rejected_token_logps"] = t_frozen + g.to(tok.dtype).unsqueeze(-1) * (tok - t_frozen)
        metrics = {"gate/mean": g.mean(), "gate/min": g.min(), "gate/max": g.max(), "gate/p_mean": p.mean()}
        return outputs.replace(**changes), metrics


@register(
    "gate-dpo",
    paper="https://arxiv.org/abs/2605.02626",
    summary="DPO whose rejected-response gradient is scaled by a detached probability gate (same loss value)",
    needs_token_logps=True,
)
def gate_dpo(
    outputs: PreferenceOutputs,
    *,
    beta: float = 0.1,
    mode: str = "seq",
    alpha: Optional[float] = None,
    tau: Optional[float] = None,
) -> LossOutput:
    """Gate-DPO: DPO's value ``-log sigma(beta h)``, with the gradient through log pi(y_l) times
    ``g = sigma(alpha (p - tau))`` (see module docstring; alpha/tau default per mode)."""
    gate = GateConfig.build(mode, alpha, tau)
    gated, gate_metrics = gate.apply(outputs)
    out = dpo(gated, beta=beta)
    out.metrics.update(gate_metrics)
    return out
