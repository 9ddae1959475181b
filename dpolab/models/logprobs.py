"""Per-token log-probs of response tokens.

Convention (see ``dpolab.data.collate``): ``loss_mask[i, t]`` is True when token ``input_ids[i, t]`` is a
response token. The model's logits at position t-1 predict token t, so we score ``input_ids[:, 1:]``
with ``logits[:, :-1]`` where ``loss_mask[:, 1:]`` is True. Only the selected positions go through
``log_softmax`` (in float32), never the full [N, T, V] tensor.

With ``with_sq=True`` the same pass also gives, at each scored position, ``log sum_v p_v^2`` of the next-token
distribution (WPO's weight, :mod:`dpolab.losses.wpo`), computed from the same float32 log-softmax without gradient
(as TRL does): ``logsumexp(2 log p)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class SequenceLogps:
    """Summed response log-probs [N], response token counts [N], per-token log-probs [N, T-1] (0 off-mask), and,
    when asked for (``with_sq``), per-token ``log sum_v p_v^2`` [N, T-1] (0 off-mask, no gradient)."""

    sums: Tensor
    counts: Tensor
    token_logps: Tensor
    token_mask: Tensor
    token_log_sum_sq: Optional[Tensor] = None


def log_sum_sq(logp: Tensor) -> Tensor:
    """``log sum_v p_v^2`` over the last axis from float32 log-probs ``logp`` [..., V], detached."""
    return torch.logsumexp(2.0 * logp.detach(), dim=-1)


def scatter_tokens(shape, rows, values: Tensor) -> Tensor:
    """A float32 [N, T-1] tensor with ``values`` at ``rows`` (a pair of index tensors) and 0 elsewhere."""
    return torch.zeros(shape, dtype=torch.float32, device=values.device).index_put(rows, values)


def gather_logps(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, *, chunk_rows: int = 4096, with_sq: bool = False
) -> SequenceLogps:
    """Log-probs of the response tokens from logits aligned with ``input_ids`` ([N, T, V]) (and, with ``with_sq``,
    the per-token ``log sum_v p_v^2``, module docstring)."""
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].bool()
    shifted = logits[:, :-1]
    rows = mask.nonzero(as_tuple=True)
    sel_targets = targets[rows]
    picked = torch.empty(sel_targets.shape[0], dtype=torch.float32, device=logits.device)
    sq = torch.empty(sel_targets.shape[0], dtype=torch.float32, device=logits.device) if with_sq else None
    for start in range(0, sel_targets.shape[0], chunk_rows):  # bounded float32 working set
        end = start + chunk_rows
        lsm = shifted[rows[0][start:end], rows[1][start:end]].float().log_softmax(-1)
        picked[start:end] = lsm.gather(1, sel_targets[start:end, None]).squeeze(1)
        if sq is not None:
            sq[start:end] = log_sum_sq(lsm)
    token_logps = scatter_tokens(targets.shape, rows, picked)
    return SequenceLogps(
        sums=token_logps.sum(-1),
        counts=mask.sum(-1),
        token_logps=token_logps,
        token_mask=mask,
        token_log_sum_sq=scatter_tokens(targets.shape, rows, sq) if sq is not None else None,
    )


def response_logps(
    model, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *, with_sq: bool = False
) -> SequenceLogps:
    """Forward ``model`` on a padded batch and return the response-token log-probs (``with_sq``: and the per-token
    ``log sum_v p_v^2``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return gather_logps(out.logits, input_ids, loss_mask, with_sq=with_sq)


def split_pairs(x: Tensor, num_pairs: int) -> tuple[Tensor, Tensor]:
    """Rows 0..B-1 are chosen, rows B..2B-1 rejected (the collator's concatenated layout)."""
    return x[:num_pairs], x[num_pairs:]
