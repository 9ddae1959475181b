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
