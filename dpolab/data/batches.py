"""Typed batches: what a collate function gives and what the engine, the objectives and the log-prob readers take.

One dataclass per data kind, all with the padded tensors of :mod:`dpolab.data.collate` (see its docstring for their
shapes and meaning) and, when the batch was collated for a packed or prefix-shared layout, ``packed`` (the layout of
:mod:`dpolab.data.packing`). ``index`` is where each example sits in its data set (set by the engine's collator; a
precomputed reference table looks it up). ``to(device)`` moves every tensor (also those inside ``packed`` and
``extras``); ``tokens()`` counts the real (non-padding) tokens.

- :class:`PairBatch`: B preference pairs as 2B rows (chosen rows, then rejected rows), with per-pair ``extras``.
- :class:`RowBatch`: B single sequences with the loss on their completions (SFT).
- :class:`LabelledRowBatch`: a :class:`RowBatch` whose rows carry a boolean ``label`` (KTO) and the tokenised
  ``examples`` themselves (KTO builds its mismatched pairs from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, TypeVar

from torch import Tensor

B = TypeVar("B", bound="Batch")


def _move(value: Any, device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class Batch:
    """The padded sequences every batch has (``input_ids``, ``attention_mask``, ``loss_mask`` [rows, T])."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    meta: List[Dict[str, Any]] = field(default_factory=list)
    packed: Optional[Dict[str, Tensor]] = None
    index: Optional[Tensor] = None

    def to(self: B, device) -> B:
        """This batch with every tensor on ``device``."""
        return replace(self, **{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def with_index(self: B, index: Tensor) -> B:
        return replace(self, index=index)

    def tokens(self) -> int:
        """Real (non-padding) tokens of the padded batch."""
        return int(self.attention_mask.sum())

    @property
    def sequences(self) -> int:
        """Rows of the padded batch (2B for B pairs)."""
        return int(self.input_ids.shape[0])


@dataclass(kw_only=True)
class PairBatch(Batch):
    """B preference pairs: rows 0..B-1 are prompt + chosen, rows B..2B-1 prompt + rejected (same pair order).
    ``num_pairs`` is B (a batch made of one side only, e.g. KTO's rows scored by a reference, holds B rows)."""

    num_pairs: int
    extras: Dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def one_sided(cls, batch: Batch) -> "PairBatch":
        """``batch``'s rows as the chosen half of a pair batch with no rejected half (to score single sequences with
        what scores pairs)."""
        shared = {f.name: getattr(batch, f.name) for f in fields(Batch)}
        return cls(**shared, num_pairs=batch.sequences)


@dataclass(kw_only=True)
class RowBatch(Batch):
    """B single sequences (prompt + completion), the loss on the completions."""


@dataclass(kw_only=True)
class LabelledRowBatch(RowBatch):
    """Unpaired rows (KTO): ``label`` BoolTensor [B] (True: desirable) and the B tokenised ``examples``."""

    label: Tensor
    examples: List[Any] = field(default_factory=list)
