"""A preference batch through the policy and the reference: per-sequence log-probs as the losses' input record,
and the loss-independent metrics (log-probs, log-ratios, margin, reward accuracy).

Used by training (the preference objective) and by ``dpolab eval``, so both see exactly the same math.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Sequence

from torch import Tensor

from ..losses import LossConfigError, PreferenceOutputs
from .fastpath import logps_for_batch
from .logprobs import split_pairs


def preference_outputs(policy, reference, batch: Dict[str, Any], *, need_tokens: bool,
                       extras: Sequence[str] = (), autocast=nullcontext, need_sq: bool = False,
                       need_ref_split: bool = False) -> PreferenceOutputs:
    """Policy (with grad) and reference (without) log-probs of a concatenated chosen+rejected batch.

    ``need_tokens``: the policy's per-token log-probs and masks too; ``need_sq`` (WPO): the policy's per-token
    ``log sum_v p_v^2`` from the same pass, no gradient; ``need_ref_split`` (LD-DPO): the reference per token (live)
    or over each pair's shared length (precomputed table), see :meth:`Reference.split_logps`."""
    n = batch["num_pairs"]
    with autocast():
        lp = logps_for_batch(policy, batch, with_sq=need_sq)  # fastest exact path for the layout (models/fastpath.py)
    pc, pr = split_pairs(lp.sums, n)
    cc, cr = split_pairs(lp.counts, n)
    fields: Dict[str, Any] = dict(policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=cc, rejected_lengths=cr)
    if reference is not None and need_ref_split:
        fields.update({k: v.to(pc.dtype) for k, v in reference.split_logps(batch, autocast).items()})
    elif reference is not None:
        ref = reference.logps(batch, autocast)
        fields.update(ref_chosen_logps=ref[0].to(pc.dtype), ref_rejected_logps=ref[1].to(pc.dtype))
    if need_tokens or need_sq:
        tc, tr = split_pairs(lp.token_logps, n)
        mc, mr = split_pairs(lp.token_mask, n)
        fields.update(policy_chosen_token_logps=tc, chosen_token_mask=mc, policy_rejected_token_logps=tr, rejected_token_mask=mr)
    if need_sq:
        sc, sr = split_pairs(lp.token_log_sum_sq, n)
        fields.update(policy_chosen_token_log_sum_sq_probs=sc, policy_rejected_token_log_sum_sq_probs=sr)
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
    """Log-probs, log-ratios against the reference, their margin, reward accuracy and ties, loss-independent."""
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
            f"{prefix}logratio_margin": (rw - rl).mean(),  # raw log-ratio difference (rewards/margin is beta times it)
            f"{prefix}reward_accuracy": (rw > rl).float().mean(),  # strict wins over all pairs; exact ties apart:
            f"{prefix}reward_ties": (rw == rl).float().mean(),
        })
    else:
        m[f"{prefix}reward_accuracy"] = (out.policy_chosen_logps > out.policy_rejected_logps).float().detach().mean()
        m[f"{prefix}reward_ties"] = (out.policy_chosen_logps == out.policy_rejected_logps).float().detach().mean()
    return m
