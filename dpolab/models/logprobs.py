"""Per-token log-probs of response tokens.

Convention (see ``dpolab.data.collate``): ``loss_mask[i, t]`` is True when token ``input_ids[i, t]`` is a
response token. The model's logits at position t-1 predict token t, so we score ``input_ids[:, 1:]``
with ``logits[:, :-1]`` where ``loss_mask[:, 1:]`` is True. Only the selected positions go through
``log_softmax`` (in float32), never the full [N, T, V] tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SequenceLogps:
    """Summed response log-probs [N], response token counts [N], per-token log-probs [N, T-1] (0 off-mask)."""

    sums: Tensor
    counts: Tensor
    token_logps: Tensor
    token_mask: Tensor


def gather_logps(logits: Tensor, input_ids: Tensor, loss_mask: Tensor, *, chunk_rows: int = 4096) -> SequenceLogps:
    """Log-probs of the response tokens from logits aligned with ``input_ids`` ([N, T, V])."""
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].bool()
    shifted = logits[:, :-1]
    rows = mask.nonzero(as_tuple=True)
    sel_targets = targets[rows]
    picked = torch.empty(sel_targets.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, sel_targets.shape[0], chunk_rows):  # bounded float32 working set
        end = start + chunk_rows
        sel = shifted[rows[0][start:end], rows[1][start:end]].float()
        picked[start:end] = sel.log_softmax(-1).gather(1, sel_targets[start:end, None]).squeeze(1)
    token_logps = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    token_logps = token_logps.index_put(rows, picked)
    return SequenceLogps(sums=token_logps.sum(-1), counts=mask.sum(-1), token_logps=token_logps, token_mask=mask)


def response_logps(model, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> SequenceLogps:
    """Forward ``model`` on a padded batch and return the response-token log-probs."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return gather_logps(out.logits, input_ids, loss_mask)


def split_pairs(x: Tensor, num_pairs: int) -> tuple[Tensor, Tensor]:
    """Rows 0..B-1 are chosen, rows B..2B-1 rejected (the collator's concatenated layout)."""
    return x[:num_pairs], x[num_pairs:]
