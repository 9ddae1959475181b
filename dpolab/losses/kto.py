"""KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306) on unpaired rows, as pure functions of log-probs.

Not a pairwise loss: it has no entry in the preference-loss registry; the ``kto`` objective
(:mod:`dpolab.engine.objectives.kto`) calls it. Notation, for row i with prompt x_i, completion y_i and label d_i
(True: desirable):

- ``r_i = log pi(y_i|x_i) - log pi_ref(y_i|x_i)`` (per-sequence sums over completion tokens);
- ``z0``, the KL estimate: the mean of ``log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)`` over mismatched pairs (each prompt
  with another row's completion), over every process, detached and clamped at 0 (:func:`kto_kl`);
- ``loss_i = desirable_weight * (1 - sigma(beta (r_i - z0)))`` if d_i, else
  ``undesirable_weight * (1 - sigma(beta (z0 - r_i)))``; the objective is the mean over rows.

``1 - sigma(t)`` is evaluated as ``sigma(-t)``: the same value without the cancellation that makes ``1 - sigma(t)``
(and its gradient) exactly 0 in float32 once t > 17. At step 0 (policy == reference) r = 0 and z0 = 0, so every
row's loss is its weight times 1/2. The same numbers as TRL's ``KTOTrainer`` with ``loss_type="kto"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from ._common import check, positive


@dataclass
class KTOOutput:
    """Per-row weighted losses [B] (the objective is their mean), the KL estimate used (0-d, detached), the implicit
    rewards ``beta * r`` of the desirable and of the undesirable rows (detached) and scalar metrics."""

    losses: Tensor
    kl: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)


def kto_kl(
    policy_kl_logps: Tensor, ref_kl_logps: Tensor, *, all_gather: Optional[Callable[[Tensor], Tensor]] = None
) -> Tensor:
    """The KL estimate ``z0``: mean over mismatched pairs of ``policy - reference`` log-probs, detached, clamped at 0.

    ``all_gather`` (several processes) concatenates a [2] tensor over processes; the (sum, count) of every process is
    gathered, so the mean is over all their pairs whatever each one holds. No pair at all gives 0."""
    diff = (policy_kl_logps.detach() - ref_kl_logps.detach()).to(torch.float64)
    stats = torch.stack([diff.sum(), diff.new_tensor(float(diff.numel()))])
    if all_gather is not None:
        stats = all_gather(stats).reshape(-1, 2).sum(0)
    mean = stats[0] / stats[1].clamp_min(1.0)
    return mean.clamp_min(0.0).to(policy_kl_logps.dtype)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    kl: Optional[Tensor] = None,
    policy_kl_logps: Optional[Tensor] = None,
    ref_kl_logps: Optional[Tensor] = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOOutput:
    """KTO on B unpaired rows: ``policy_logps`` / ``ref_logps`` [B] sums over each completion, ``labels`` [B] bool.

    The KL estimate is ``kl`` when given (e.g. taken over a whole optimiser step), else :func:`kto_kl` of the
    mismatched pairs' ``policy_kl_logps`` / ``ref_kl_logps``. It is used detached: no gradient flows through it."""
    positive("kto", beta=beta)
    for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        check(
            isinstance(w, (int, float)) and w >= 0 and w != float("inf"),
            "kto",
            f"{name} must be a finite number >= 0, got {w!r}",
        )
    labels = torch.as_tensor(labels, device=policy_logps.device)
    check(
        labels.dtype == torch.bool and labels.shape == policy_logps.shape,
        "kto",
        f"labels must be a bool tensor shaped like the log-probs {tuple(policy_logps.shape)}, got {labels.dtype} "
        f"{tuple(labels.shape)}",
    )
    if kl is None:
        check(
            policy_kl_logps is not None and ref_kl_logps is not None,
            "kto",
            "needs the KL estimate (kl) or the mismatched pairs' log-probs (policy_kl_logps, ref_kl_logps)",
        )
        kl = kto_kl(policy_kl_logps, ref_kl_logps)
    z0 = torch.as_tensor(kl, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    r = policy_logps - ref_logps.to(policy_logps.dtype)
    t = beta * torch.where(labels, r - z0, z0 - r)  # the margin each row's loss pushes up
    weight = torch.where(
        labels, torch.full_like(r, float(desirable_weight)), torch.full_like(r, float(undesirable_weight))
    )
    losses = weight * torch.sigmoid(-t)  # = weight * (1 - sigma(t))
    rewards = beta * r.detach()
    chosen, rejected = rewards[labels], rewards[~labels]
    metrics: Dict[str, Tensor] = {"loss": losses.detach().mean(), "kl": z0}
    if chosen.numel():
        metrics["rewards/chosen"] = chosen.mean()
    if rejected.numel():
        metrics["rewards/rejected"] = rejected.mean()
    if chosen.numel() and rejected.numel():
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return KTOOutput(losses=losses, kl=z0, chosen_rewards=chosen, rejected_rewards=rejected, metrics=metrics)
