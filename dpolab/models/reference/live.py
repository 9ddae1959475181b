"""The live kinds: a model scores each batch as it comes (a frozen copy, another model, the adapter-disabled policy)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict

import torch
from torch import Tensor

from ..fastpath import logps_for_batch
from ..logprobs import SequenceLogps, split_pairs
from ..unwrap import unwrap
from .base import Reference, ReferenceSetupError


class LiveReference(Reference):
    """A reference that scores each batch with a forward pass (no gradients, under the run's autocast), by the LM-head
    path ``logits`` the policy uses (``train.logits``)."""

    logits: str = "response"

    def logps(self, batch: Any, autocast: Callable = nullcontext) -> tuple[Tensor, Tensor]:
        return split_pairs(self._scored(batch, autocast).sums, batch.num_pairs)

    def split_logps(self, batch: Any, autocast: Callable = nullcontext) -> Dict[str, Tensor]:
        n = batch.num_pairs
        lp = self._scored(batch, autocast)
        (c, r), (tc, tr) = split_pairs(lp.sums, n), split_pairs(lp.token_logps, n)
        return dict(ref_chosen_logps=c, ref_rejected_logps=r, ref_chosen_token_logps=tc, ref_rejected_token_logps=tr)

    def _scored(self, batch: Any, autocast: Callable) -> SequenceLogps:
        with torch.no_grad(), autocast():
            return self._forward(batch)

    def _forward(self, batch: Any) -> SequenceLogps:
        raise NotImplementedError


class FrozenModel(LiveReference):
    """A model of its own, frozen (eval mode, no gradients), already on the run's device."""

    def __init__(self, model, *, logits: str = "response"):
        self.model, self.logits = model, logits
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    def _forward(self, batch: Any) -> SequenceLogps:
        return logps_for_batch(self.model, batch, logits=self.logits)


class LiveCopy(FrozenModel):
    """A frozen copy of the starting policy (full fine-tuning); the one kind TR-DPO can move toward the policy."""

    mode = "copy"
    description = "live copy"

    @torch.no_grad()
    def mix_toward(self, policy, alpha: float) -> None:
        """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter (alpha = 1: the reference
        becomes the policy)."""
        ref, pol = dict(self.model.named_parameters()), dict(unwrap(policy).named_parameters())
        if ref.keys() != pol.keys():
            raise ReferenceSetupError("reference.sync_every: the reference and the policy have different parameters")
        for name, p in ref.items():
            p.mul_(1.0 - alpha).add_(pol[name].detach().to(p.dtype), alpha=alpha)

    def state_dict(self) -> Dict[str, Tensor]:
        """The copy's weights (on the CPU), which TR-DPO has moved since the start."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)


class SeparateModel(FrozenModel):
    """Another model (``reference.name_or_path``, or ``dpolab eval --reference``)."""

    mode = "separate"
    description = "live separate"


class AdapterOff(LiveReference):
    """The policy itself with its LoRA adapters disabled: no second copy in memory."""

    mode = "adapter"
    description = "live adapter"

    def __init__(self, policy, *, logits: str = "response"):
        if not hasattr(unwrap(policy), "disable_adapter"):
            raise ReferenceSetupError(
                "reference.mode=adapter needs a LoRA policy (lora.enabled=true); use copy or precomputed"
            )
        self.policy, self.logits = policy, logits

    def _forward(self, batch: Any) -> SequenceLogps:
        pol = unwrap(self.policy)
        was_training = pol.training
        pol.eval()
        try:
            with pol.disable_adapter():
                return logps_for_batch(pol, batch, logits=self.logits)
        finally:
            pol.train(was_training)
