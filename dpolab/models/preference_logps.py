"""A preference batch through the policy and the reference: per-sequence log-probs as the losses' input record,
and the loss-independent metrics (log-probs, log-ratios, margin, reward accuracy).

Used by training (the preference objective) and by ``dpolab eval``, so both see exactly the same math.

A pair is a tie when its margin is within the float32 rounding of the sums it is made of (:func:`tie_tolerance`):
the same log-probs summed in another order, or computed in another batch (another padding width, another packing,
a precomputed reference table against the live policy), differ by about 1e-5 nats for ~500-token responses, and such
noise is no win. The tolerance, ``TIE_ULPS`` float32 epsilons times the sum over the pair's sequences of
(|summed log-prob| + tokens), is about 1e-3 nats for 500-token responses: two orders of magnitude above that noise
and two below any difference worth a word (0.1 nats). It covers float32 arithmetic; a bf16 forward's own rounding
(autocast) is larger and is not what it is sized for.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from ..data.batches import PairBatch
from ..losses import LossConfigError, PreferenceOutputs
from .fastpath import logps_for_batch
from .logprobs import split_pairs


def preference_outputs(
    policy,
    reference,
    batch: PairBatch,
    *,
    need_tokens: bool,
    extras: Sequence[str] = (),
    autocast=nullcontext,
    need_sq: bool = False,
    need_ref_split: bool = False,
    logits: Optional[str] = None,
) -> PreferenceOutputs:
    """Policy (with grad) and reference (without) log-probs of a concatenated chosen+rejected batch.

    ``need_tokens``: the policy's per-token log-probs and masks too; ``need_sq`` (WPO): the policy's per-token
    ``log sum_v p_v^2`` from the same pass, no gradient; ``need_ref_split`` (LD-DPO): the reference per token (live)
    or over each pair's shared length (precomputed table), see :meth:`Reference.split_logps`. ``logits``: the
    policy's LM-head mode (``train.logits``; None: 'response')."""
    n = batch.num_pairs
    with autocast():
        # the fastest exact path for the layout (models/fastpath.py)
        lp = logps_for_batch(policy, batch, logits=logits or "response", with_sq=need_sq)
    pc, pr = split_pairs(lp.sums, n)
    cc, cr = split_pairs(lp.counts, n)
    fields: Dict[str, Any] = dict(
        policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=cc, rejected_lengths=cr
    )
    if reference is not None and need_ref_split:
        fields.update({k: v.to(pc.dtype) for k, v in reference.split_logps(batch, autocast).items()})
    elif reference is not None:
        ref = reference.logps(batch, autocast)
        fields.update(ref_chosen_logps=ref[0].to(pc.dtype), ref_rejected_logps=ref[1].to(pc.dtype))
    if need_tokens or need_sq:
        tc, tr = split_pairs(lp.token_logps, n)
        mc, mr = split_pairs(lp.token_mask, n)
        fields.update(
            policy_chosen_token_logps=tc, chosen_token_mask=mc, policy_rejected_token_logps=tr, rejected_token_mask=mr
        )
    if need_sq:
        sc, sr = split_pairs(lp.token_log_sum_sq, n)
        fields.update(policy_chosen_token_log_sum_sq_probs=sc, policy_rejected_token_log_sum_sq_probs=sr)
    batch_extras = batch.extras
    missing = [k for k in extras if k not in batch_extras]
    if missing:
        raise LossConfigError(
            f"the loss needs the per-example column(s) {missing} but the data has none; "
            f"add them to the data (e.g. with `dpolab rm score`) and list them in data.extras"
        )
    fields["extras"] = {k: v.to(pc.device) for k, v in batch_extras.items()}
    return PreferenceOutputs(**fields)


TIE_ULPS = 4.0  # float32 epsilons per nat (and per token) of the summed log-probs a margin is made of


def tie_tolerance(sums: Sequence[Tensor], counts: Sequence[Tensor]) -> Tensor:
    """Per pair, the largest |margin| that is float32 rounding rather than a difference: ``TIE_ULPS`` * eps(float32)
    * sum over the pair's sequences of (|summed log-prob| + token count) (module docstring). ``sums``: the [B]
    summed log-probs the margin is made of; ``counts``: the token counts of the distinct sequences among them."""
    scale = sum(s.detach().abs().float() for s in sums) + sum(c.detach().float() for c in counts)
    return TIE_ULPS * torch.finfo(torch.float32).eps * scale


def pair_outcomes(margin: Tensor, tolerance: Tensor) -> tuple[Tensor, Tensor]:
    """(wins, ties) as booleans [B]: a win is a margin above its tolerance, a tie one within it."""
    m = margin.detach().float()
    return m > tolerance, m.abs() <= tolerance


def pair_tolerance(out: PreferenceOutputs) -> Tensor:
    """:func:`tie_tolerance` of each pair's margin: with a reference the policy's and the reference's sums of
    chosen and rejected, else the policy's two sums."""
    sums = [out.policy_chosen_logps, out.policy_rejected_logps]
    if out.ref_chosen_logps is not None:
        sums += [out.ref_chosen_logps, out.ref_rejected_logps]
    lengths = [c for c in (out.chosen_lengths, out.rejected_lengths) if c is not None]  # absent: sums only
    return tie_tolerance(sums, lengths * (2 if out.ref_chosen_logps is not None else 1))


def generic_metrics(out: PreferenceOutputs, prefix: str = "") -> Dict[str, Tensor]:
    """Log-probs, log-ratios against the reference, their margin, reward accuracy (strict wins over all pairs) and
    ties (margins within :func:`tie_tolerance`), loss-independent."""
    m: Dict[str, Tensor] = {
        f"{prefix}logps/chosen": out.policy_chosen_logps.detach().mean(),
        f"{prefix}logps/rejected": out.policy_rejected_logps.detach().mean(),
    }
    if out.ref_chosen_logps is not None:
        rw = (out.policy_chosen_logps - out.ref_chosen_logps).detach()
        rl = (out.policy_rejected_logps - out.ref_rejected_logps).detach()
        m.update(
            {
                f"{prefix}ref_logps/chosen": out.ref_chosen_logps.detach().mean(),
                f"{prefix}ref_logps/rejected": out.ref_rejected_logps.detach().mean(),
                f"{prefix}logratio/chosen": rw.mean(),
                f"{prefix}logratio/rejected": rl.mean(),
                f"{prefix}logratio_margin": (
                    rw - rl
                ).mean(),  # raw log-ratio difference (rewards/margin is beta times it)
            }
        )
        margin = rw - rl
    else:
        margin = (out.policy_chosen_logps - out.policy_rejected_logps).detach()
    wins, ties = pair_outcomes(margin, pair_tolerance(out))
    m[f"{prefix}reward_accuracy"] = wins.to(margin.dtype).mean()  # strict wins over all pairs; ties apart:
    m[f"{prefix}reward_ties"] = ties.to(margin.dtype).mean()
    return m
