"""The contract between the engine and every loss.

A loss never sees a model, a tokenizer or an optimiser. It sees a :class:`PreferenceOutputs`
record (per-sequence log-probs of policy and reference for chosen and rejected, token counts,
optionally per-token log-probs and per-example extra columns) and returns a :class:`LossOutput`
(per-example losses, an optional keep-mask, and scalar metrics). That makes every loss testable
with hand-made tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from torch import Tensor

from ..errors import UserError


class LossConfigError(UserError, ValueError):
    """A loss was asked for with an unknown name, a bad parameter, or without the inputs it needs."""


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class DistContext:
    """The batch a batch-level loss takes its statistics over, when that is more than the pairs of one call.

    A loss call sees one micro-batch of one process; beta-DPO's statistics and AOT's sorting are defined over the
    whole optimiser step. Either ``step_outputs`` holds the detached outputs of the whole step (every micro-batch of
    every process, in the step's order; the engine computes them in a no-grad pass first) and ``offset`` says where
    this call's pairs sit in it, or ``all_gather`` concatenates a [B] tensor over processes in rank order (equal B
    per process; identity for one) and ``rank`` places this call's pairs. ``step`` identifies the optimiser step, so
    a stateful loss updates its statistics once per step however many calls the step makes. The engine passes it as
    an argument to each call (:meth:`CompositeLoss.__call__`); evaluation passes :data:`LOCAL`.
    """

    all_gather: Callable[[Tensor], Tensor] = _identity
    rank: int = 0
    world_size: int = 1
    step_outputs: Optional["PreferenceOutputs"] = None
    offset: int = 0
    step: Optional[int] = None

    def global_values(self, local: Tensor, of: Callable[["PreferenceOutputs"], Tensor]) -> tuple[Tensor, slice]:
        """(a per-pair quantity over the whole batch, detached; the slice of this call's pairs in it). ``local`` is
        the quantity for this call's pairs, ``of`` computes it from a :class:`PreferenceOutputs`."""
        b = local.shape[0]
        if self.step_outputs is not None:
            return of(self.step_outputs).detach(), slice(self.offset, self.offset + b)
        return self.all_gather(local.detach()), slice(self.rank * b, (self.rank + 1) * b)


LOCAL = DistContext()  # one process, or statistics over this process's batch only


@dataclass
class PreferenceOutputs:
    """Everything a preference loss may look at, for a batch of B pairs.

    Sequence log-probs are sums over response tokens (prompt and padding excluded).
    Per-token tensors are right-padded to a common length with ``*_token_mask`` marking real tokens.
    ``extras`` carries per-example columns from the data, e.g. ``rm_margin`` for MADPO.

    Optional inputs of a few methods (each raises :class:`LossConfigError` naming the field when it is missing):

    * ``policy_{chosen,rejected}_token_log_sum_sq_probs`` [B, T] (WPO weighting): at every response token,
      ``log sum_v p_v^2`` of the policy's next-token distribution that predicts it (the same positions as
      ``policy_*_token_logps``, same ``*_token_mask``; any value off-mask, no gradient needed).
    * ``ref_{chosen,rejected}_token_logps`` [B, T] (LD-DPO): the reference's per-token log-probs, laid out and
      masked like the policy's. Or, instead, ``ref_{chosen,rejected}_shared_logps`` [B]: the reference's log-prob
      summed over the first ``min(|y_w|, |y_l|)`` response tokens of each response of the pair (what LD-DPO needs,
      cacheable with precomputed reference log-probs).
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Optional[Tensor] = None
    ref_rejected_logps: Optional[Tensor] = None
    chosen_lengths: Optional[Tensor] = None
    rejected_lengths: Optional[Tensor] = None
    policy_chosen_token_logps: Optional[Tensor] = None
    chosen_token_mask: Optional[Tensor] = None
    policy_rejected_token_logps: Optional[Tensor] = None
    rejected_token_mask: Optional[Tensor] = None
    policy_chosen_token_log_sum_sq_probs: Optional[Tensor] = None
    policy_rejected_token_log_sum_sq_probs: Optional[Tensor] = None
    ref_chosen_token_logps: Optional[Tensor] = None
    ref_rejected_token_logps: Optional[Tensor] = None
    ref_chosen_shared_logps: Optional[Tensor] = None
    ref_rejected_shared_logps: Optional[Tensor] = None
    extras: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.policy_chosen_logps.shape[0])

    def replace(self, **changes: Any) -> "PreferenceOutputs":
        return dataclasses.replace(self, **changes)

    # -- helpers shared by many losses -------------------------------------------------
    def require_reference(self, loss_name: str) -> tuple[Tensor, Tensor]:
        if self.ref_chosen_logps is None or self.ref_rejected_logps is None:
            raise LossConfigError(
                f"loss '{loss_name}' needs reference log-probs (ref_chosen_logps / ref_rejected_logps), got none"
            )
        return self.ref_chosen_logps, self.ref_rejected_logps

    def require_lengths(self, loss_name: str) -> tuple[Tensor, Tensor]:
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise LossConfigError(f"loss '{loss_name}' needs response token counts (chosen_lengths / rejected_lengths)")
        return self.chosen_lengths.to(self.policy_chosen_logps.dtype).clamp_min(1), self.rejected_lengths.to(
            self.policy_rejected_logps.dtype
        ).clamp_min(1)

    def logratios(self, loss_name: str) -> tuple[Tensor, Tensor]:
        """Implicit rewards without beta: r_w = log pi(y_w) - log pi_ref(y_w), r_l likewise."""
        ref_c, ref_r = self.require_reference(loss_name)
        return self.policy_chosen_logps - ref_c, self.policy_rejected_logps - ref_r


@dataclass
class LossOutput:
    """Per-example losses [B]; ``mask`` [B] (1 keep, 0 drop) when a loss filters pairs (beta-DPO).

    ``metrics`` holds detached scalars (python floats or 0-d tensors) to log.
    ``chosen_rewards``/``rejected_rewards`` are the loss's implicit rewards (beta * log-ratio), detached.
    """

    losses: Tensor
    metrics: Dict[str, Any] = field(default_factory=dict)
    mask: Optional[Tensor] = None
    chosen_rewards: Optional[Tensor] = None
    rejected_rewards: Optional[Tensor] = None

    def reduced(self) -> Tensor:
        """Mean over kept examples (all examples when there is no mask)."""
        if self.mask is None:
            return self.losses.mean()
        m = self.mask.to(self.losses.dtype)
        return (self.losses * m).sum() / m.sum().clamp_min(1.0)


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossInfo:
    """A registry entry: how to build a loss and what it needs."""

    name: str
    fn: Callable[..., Any]
    paper: str
    summary: str
    needs_reference: bool = True
    needs_token_logps: bool = False
    needs_token_log_sum_sq_probs: bool = False  # WPO: policy_*_token_log_sum_sq_probs
    needs_ref_token_split: bool = False  # LD-DPO: ref_*_token_logps, or ref_*_shared_logps
    needs_extras: tuple[str, ...] = ()
    stateful: bool = False  # fn is then a class: instantiate with params, call with outputs
    batch_level: bool = False  # its value for a pair depends on the other pairs of the step: called with ``dist``
    defaults: Dict[str, Any] = field(default_factory=dict)
