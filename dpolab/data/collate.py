"""Padded batches: the format the engine consumes.

``collate_preference(pairs, pad_id, pad_to_multiple_of=None)`` returns a :class:`~dpolab.data.batches.PairBatch`
holding, for B pairs::

    input_ids       LongTensor [2B, T]  rows 0..B-1 = prompt+chosen, rows B..2B-1 = prompt+rejected
                                         (same pair order), right-padded with pad_id
    attention_mask  LongTensor [2B, T]  1 on real tokens, 0 on padding
    loss_mask       BoolTensor [2B, T]  True exactly at positions holding a RESPONSE token (incl. its EOS);
                                         False on prompt tokens (incl. BOS) and padding
    extras          dict name -> FloatTensor [B]  per-pair numbers (e.g. rm_margin); every pair must have
                                         the same extras keys, else ValueError
    num_pairs       int B
    meta            list of the B pairs' meta dicts

T = the longest sequence, rounded up to a multiple of ``pad_to_multiple_of`` if given. The engine scores
token t from the logits at t-1: ``logits[:, :-1]`` against ``input_ids[:, 1:]``, weighted by
``loss_mask[:, 1:]``; ``loss_mask.sum(-1)`` is the response length. A response token at position 0 (no
prompt, no BOS) therefore cannot be scored; with BOS on (the default) this never happens.

``collate_sft(rows, pad_id, pad_to_multiple_of=None)`` returns a :class:`~dpolab.data.batches.RowBatch`:
``input_ids``, ``attention_mask`` [B, T], ``loss_mask`` [B, T] (True on completion tokens, incl. EOS) and ``meta``.

``collate_unpaired_fast(rows, pad_id, layout)`` (KTO) is ``collate_sft_fast`` as a
:class:`~dpolab.data.batches.LabelledRowBatch`: plus ``label`` BoolTensor [B] and the rows themselves.

``length_grouped_indices(lengths, batch_size, seed)`` orders examples so that each batch holds similar
lengths (less padding) while the batch order stays random.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

import torch

from dpolab.data.batches import LabelledRowBatch, PairBatch, RowBatch
from dpolab.data.types import TokenizedPair, TokenizedSFT


def _pad(seqs: List[List[int]], starts: List[int], pad_id: int, multiple: Optional[int]) -> Dict[str, torch.Tensor]:
    """Right-pad ``seqs``; the loss mask is True from ``starts[i]`` to the end of sequence i."""
    if pad_id is None:
        raise ValueError("pad_id is None: set tokenizer.pad_token (e.g. to the EOS token) before collating")
    width = max(len(s) for s in seqs)
    if multiple:
        width = -(-width // multiple) * multiple
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        loss[i, start : len(seq)] = True
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def _extras(pairs: Sequence[TokenizedPair]) -> Dict[str, torch.Tensor]:
    keys = set(pairs[0].extras)
    for i, p in enumerate(pairs):
        if set(p.extras) != keys:
            raise ValueError(
                f"pair {i} has extras {sorted(p.extras)} but pair 0 has {sorted(keys)}: every pair needs the same "
                f"extras"
            )
    return {k: torch.tensor([float(p.extras[k]) for p in pairs], dtype=torch.float32) for k in sorted(keys)}


def collate_preference(
    pairs: Sequence[TokenizedPair], pad_id: int, *, pad_to_multiple_of: Optional[int] = None
) -> PairBatch:
    """Stack B pairs into the [2B, T] batch described in the module docstring."""
    if not pairs:
        raise ValueError("cannot collate an empty list of pairs")
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    starts = [len(p.prompt_ids) for p in pairs] * 2
    return PairBatch(
        **_pad(seqs, starts, pad_id, pad_to_multiple_of),
        extras=_extras(pairs),
        num_pairs=len(pairs),
        meta=[p.meta for p in pairs],
    )


def collate_sft(rows: Sequence[TokenizedSFT], pad_id: int, *, pad_to_multiple_of: Optional[int] = None) -> RowBatch:
    """Stack B SFT rows into a [B, T] batch with the loss on completion tokens."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    seqs = [r.prompt_ids + r.completion_ids for r in rows]
    starts = [len(r.prompt_ids) for r in rows]
    return RowBatch(**_pad(seqs, starts, pad_id, pad_to_multiple_of), meta=[r.meta for r in rows])


def pair_length(pair: TokenizedPair) -> int:
    """The padded width a pair needs: prompt plus its longer response."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def length_grouped_indices(lengths: Sequence[int], batch_size: int, seed: int, *, mega: int = 50) -> List[int]:
    """A permutation of ``range(len(lengths))``: shuffled, sorted by length (longest first) inside chunks of
    ``mega * batch_size``, then cut into batches whose order is shuffled. Deterministic for a seed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    size = batch_size * mega
    chunks = [sorted(idx[i : i + size], key=lambda j: -lengths[j]) for i in range(0, len(idx), size)]
    batches = [c[i : i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
    rng.shuffle(batches)
    return [j for b in batches for j in b]


def collate_preference_fast(
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    layout: str = "prefix",
    *,
    capacity: int = 0,
    hidden_size: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> PairBatch:
    """``collate_preference`` plus, for ``layout`` 'packed' or 'prefix', ``batch.packed``: the same batch in a
    padding-free packed or prompt-prefix-shared layout (see ``dpolab.data.packing``). 'padded' adds nothing."""
    from dpolab.data.packing import preference_layout

    batch = collate_preference(pairs, pad_id, pad_to_multiple_of=pad_to_multiple_of)
    if layout != "padded":
        batch.packed = preference_layout(pairs, pad_id, layout, capacity=capacity, hidden_size=hidden_size)
    return batch


def collate_sft_fast(
    rows: Sequence[TokenizedSFT],
    pad_id: int,
    layout: str = "packed",
    *,
    capacity: int = 0,
    hidden_size: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> RowBatch:
    """``collate_sft`` plus ``batch.packed`` for layout 'packed' (or 'prefix', which for SFT means 'packed')."""
    from dpolab.data.packing import sft_layout

    batch = collate_sft(rows, pad_id, pad_to_multiple_of=pad_to_multiple_of)
    if layout != "padded":
        batch.packed = sft_layout(rows, pad_id, capacity=capacity, hidden_size=hidden_size)
    return batch


def collate_unpaired_fast(
    rows: Sequence,
    pad_id: int,
    layout: str = "packed",
    *,
    capacity: int = 0,
    hidden_size: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> LabelledRowBatch:
    """Unpaired (KTO) rows: ``collate_sft_fast`` (loss mask on the completions) plus ``label`` BoolTensor [B] and
    the rows themselves (``examples``)."""
    batch = collate_sft_fast(
        rows, pad_id, layout, capacity=capacity, hidden_size=hidden_size, pad_to_multiple_of=pad_to_multiple_of
    )
    label = torch.tensor([bool(r.label) for r in rows], dtype=torch.bool)
    return LabelledRowBatch(**vars(batch), label=label, examples=list(rows))
