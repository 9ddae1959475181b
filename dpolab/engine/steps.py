"""One forward pass: a collated batch -> log-probs -> loss inputs -> objective and metrics.

Shared by training and evaluation, so both see exactly the same math.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from ..losses import CompositeLoss, LossConfigError, PreferenceOutputs
from ..models.fastpath import logps_for_batch
from ..models.logprobs import split_pairs
from ..models.reference import Reference


def preference_outputs(policy, reference: Optional[Reference], batch: Dict[str, Any], *, need_tokens: bool,
                       extras: Sequence[str] = (), autocast=nullcontext) -> PreferenceOutputs:
    """Policy (with grad) and reference (without) log-probs of a concatenated chosen+rejected batch."""
    n = batch["num_pairs"]
    with autocast():
        lp = logps_for_batch(policy, batch)  # fastest exact path for the batch layout (models/fastpath.py)
    ref = reference.logps(batch, autocast) if reference is not None else None
    pc, pr = split_pairs(lp.sums, n)
    cc, cr = split_pairs(lp.counts, n)
    fields: Dict[str, Any] = dict(policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=cc, rejected_lengths=cr)
    if ref is not None:
        fields.update(ref_chosen_logps=ref[0].to(pc.dtype), ref_rejected_logps=ref[1].to(pc.dtype))
    if need_tokens:
        tc, tr = split_pairs(lp.token_logps, n)
        mc, mr = split_pairs(lp.token_mask, n)
        fields.update(policy_chosen_token_logps=tc, chosen_token_mask=mc, policy_rejected_token_logps=tr, rejected_token_mask=mr)
    batch_extras = batch.get("extras") or {}
    missing = [k for k in extras if k not in batch_extras]
    if missing:
        raise LossConfigError(
            f"the loss needs the per-example column(s) {missing} but the data has none; "
            f"add them to the data (e.g. with `dpolab rm score`) and list them in data.extras"
        )
    fields["extras"] = {k: v.to(pc.device) for k, v in batch_extras.items()}
    return PreferenceOutputs(**fields)


def generic_metrics(out: PreferenceOutputs, prefix: str = "") -> Dict[str, Tensor]:
    """Log-probs, log-ratios against the reference, margin and reward accuracy, loss-independent."""
    m: Dict[str, Tensor] = {
        f"{prefix}logps/chosen": out.policy_chosen_logps.detach().mean(),
        f"{prefix}logps/rejected": out.policy_rejected_logps.detach().mean(),
    }
    if out.ref_chosen_logps is not None:
        rw = (out.policy_chosen_logps - out.ref_chosen_logps).detach()
        rl = (out.policy_rejected_logps - out.ref_rejected_logps).detach()
        m.update({
            f"{prefix}ref_logps/chosen": out.ref_chosen_logps.detach().mean(),
            f"{prefix}ref_logps/rejected": out.ref_rejected_logps.detach().mean(),
            f"{prefix}logratio/chosen": rw.mean(),
            f"{prefix}logratio/rejected": rl.mean(),
            f"{prefix}margin": (rw - rl).mean(),
            f"{prefix}reward_accuracy": (rw > rl).float().mean(),
        })
    else:
        m[f"{prefix}reward_accuracy"] = (out.policy_chosen_logps > out.policy_rejected_logps).float().detach().mean()
    return m


def preference_step(policy, reference, loss: CompositeLoss, batch, autocast=nullcontext):
    out = preference_outputs(policy, reference, batch, need_tokens=loss.needs_token_logps, extras=loss.needs_extras,
                             autocast=autocast)
    objective, metrics, parts = loss(out)
    metrics.update(generic_metrics(out))
    for p in parts:  # the first component with implicit rewards gives rewards/chosen and rewards/rejected
        if p.chosen_rewards is not None:
            metrics["rewards/chosen"] = p.chosen_rewards.mean()
            metrics["rewards/rejected"] = p.rejected_rewards.mean()
            break
    return objective, metrics


def sft_step(policy, batch, autocast=nullcontext):
    """Token-mean NLL of the completion tokens; returns (summed NLL, token count, metrics)."""
    with autocast():
        lp = logps_for_batch(policy, batch)  # fastest exact path for the batch layout (models/fastpath.py)
    nll_sum = -lp.sums.sum()
    tokens = lp.counts.sum()
    return nll_sum, tokens, {"nll": (nll_sum / tokens.clamp_min(1)).detach()}


def rm_step(model, batch, autocast=nullcontext, center_weight: float = 0.0):
    """Reward-model training: Bradley-Terry loss -log sigma(r_w - r_l) on the chosen rows then the rejected rows of
    the batch, plus ``center_weight * (r_w + r_l)^2`` (TRL's center_rewards_coefficient); returns (mean, metrics)."""
    from ..rewards.model import reward_metrics, sequence_rewards

    n = batch["num_pairs"]
    with autocast():
        rewards = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
    r_w, r_l = split_pairs(rewards, n)
    bt = -torch.nn.functional.logsigmoid(r_w - r_l)
    losses = bt + center_weight * (r_w + r_l) ** 2 if center_weight else bt
    objective = losses.mean()
    metrics: Dict[str, Any] = {"loss": objective.detach(), "rm/bt_loss": bt.detach().mean()}
    if center_weight:
        metrics["rm/center_loss"] = ((r_w + r_l) ** 2).detach().mean()
    metrics.update(reward_metrics(r_w, r_l))
    metrics["_rewards"] = (r_w.detach(), r_l.detach())  # for exact set-level statistics (the trainer's evaluation)
    return objective, metrics
