"""beta-DPO: DPO with a batch-level dynamic beta and beta-guided data filtering.

Wu et al. 2024, "beta-DPO: Direct Preference Optimization with Dynamic beta", arXiv 2407.08639;
follows the official code (junkangwu/beta-DPO, ``trainers.py``).

Per step, with M_i = r_w - r_l (detached, gathered over processes):
1. running statistics, updated with the batch *before* the loss (official code: zero-initialised,
   momentum 0.9, unbiased batch std):  M_0 <- m M_0 + (1-m) mean(M),  s <- m s + (1-m) std(M);
2. filtering: weights w_i = exp(-0.5 ((M_i - M_0)/s)^2); keep k = max(1, floor(N (1-rho))) pairs drawn
   without replacement with probability proportional to w (torch.multinomial with our own generator);
3. beta_batch = beta_0 (1 + alpha (mean_{kept} M_i - M_0)), clamped at >= 1e-3, detached;
4. L_i = -log sigma(beta_batch h_i), averaged over the kept pairs (the returned mask). Under several
   processes each returns its slice of the global mask and scales its losses so that the average over
   processes of the local masked means is the global masked mean; ``kept`` is the global count.

Robustness beyond the official code (which NaNs/crashes in these cases): with one pair the batch std is
taken as 0; a running std below 1e-12 means uniform weights; weights are floored at 1e-12 x their
maximum so k draws without replacement always succeed (this only matters once every
non-negligible pair has been drawn). Implicit rewards use beta_0, as the official code does.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from ._common import check, positive, preference_output, sigmoid_pair_loss
from .base import LOCAL, DistContext, LossOutput, PreferenceOutputs
from .registry import register


@register(
    "beta-dpo",
    paper="https://arxiv.org/abs/2407.08639",
    summary="DPO with batch-level dynamic beta and Gaussian-weighted filtering of outlier pairs (stateful)",
    stateful=True,
)
class BetaDPO:
    """Stateful beta-DPO loss. Call with a :class:`PreferenceOutputs`; checkpoint via ``state_dict``.

    The statistics are taken over the batch that ``dist`` (a :class:`DistContext`, passed at each call) gathers:
    this process's pairs by default, every process's pairs in a multi-process run. Every process must use the same
    ``seed`` so all draw the same global subset.
    """

    def __init__(self, beta: float = 0.1, alpha: float = 0.6, rho: float = 0.2, momentum: float = 0.9, seed: int = 0):
        positive("beta-dpo", beta=beta)
        check(0.0 <= rho < 1.0, "beta-dpo", f"rho must be in [0, 1), got {rho}")
        check(0.0 <= momentum < 1.0, "beta-dpo", f"momentum must be in [0, 1), got {momentum}")
        self.beta, self.alpha, self.rho, self.momentum, self.seed = (
            float(beta),
            float(alpha),
            float(rho),
            float(momentum),
            int(seed),
        )
        self.M0 = 0.0
        self.std = 0.0
        self.steps = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self._step: Optional[tuple] = None  # (step, mask, beta, k) of the optimiser step under way

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"M0": self.M0, "std": self.std, "steps": self.steps, "generator": self.generator.get_state().clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.M0 = float(state["M0"])
        self.std = float(state["std"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"].clone())

    # -- the loss ----------------------------------------------------------------------------
    def _update_stats(self, gaps: torch.Tensor) -> None:
        batch_mean = float(gaps.mean())
        batch_std = float(gaps.std()) if gaps.numel() > 1 else 0.0
        m = self.momentum
        self.M0 = m * self.M0 + (1.0 - m) * batch_mean
        self.std = m * self.std + (1.0 - m) * batch_std
        self.steps += 1

    def _weights(self, gaps: torch.Tensor) -> torch.Tensor:
        if not (self.std > 1e-12):
            return torch.ones_like(gaps)
        w = torch.exp(-0.5 * ((gaps - self.M0) / self.std) ** 2)
        top = float(w.max())
        if not math.isfinite(top) or top <= 0.0:
            return torch.ones_like(gaps)
        return w.clamp_min(1e-12 * top)

    def __call__(self, outputs: PreferenceOutputs, dist: DistContext = LOCAL) -> LossOutput:
        r_w, r_l = outputs.logratios("beta-dpo")
        h = r_w - r_l
        gaps, own = dist.global_values(h, _gaps)
        gaps = gaps.to(device="cpu", dtype=torch.float64)
        n, b = gaps.numel(), h.numel()
        if dist.step is None or self._step is None or self._step[0] != dist.step:
            # once per optimiser step: statistics, the kept pairs and beta over the step's whole batch
            self._update_stats(gaps)
            k = max(1, int(math.floor(n * (1.0 - self.rho) + 1e-9)))
            idx = torch.multinomial(self._weights(gaps), k, replacement=False, generator=self.generator)
            global_mask = torch.zeros(n, dtype=torch.float64)
            global_mask[idx] = 1.0
            beta_batch = max(self.beta * (1.0 + self.alpha * (float(gaps[idx].mean()) - self.M0)), 1e-3)
            self._step = (dist.step, global_mask, beta_batch, k) if dist.step is not None else None
        else:
            _, global_mask, beta_batch, k = self._step
        mask = global_mask[own].to(device=h.device, dtype=h.dtype)
        losses = sigmoid_pair_loss(beta_batch * h)
        if n != b:
            # Several calls make up the step (micro-batches, processes): the objective is the mean over the k pairs
            # kept in the step's batch, but each call reduces over its own kept pairs and the engine weights each
            # call by its pairs (b / n of the step). Scaling this call's losses by (kept here) * (n / b) / k makes
            # that weighted sum equal the step's mean.
            losses = losses * (float(mask.sum()) * (n / b) / k)
        metrics = {"beta": beta_batch, "M0": self.M0, "std": self.std, "kept": float(k)}
        return preference_output(losses, r_w, r_l, self.beta, metrics=metrics, mask=mask)


def _gaps(outputs: PreferenceOutputs) -> torch.Tensor:
    r_w, r_l = outputs.logratios("beta-dpo")
    return r_w - r_l
