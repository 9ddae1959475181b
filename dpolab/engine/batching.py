"""Deterministic, resumable batch order.

The order of epoch ``e`` is a permutation seeded by (seed, e), so a resumed run only needs the optimiser
step it stopped at to continue with exactly the batches it would have seen. An optimiser step consumes one
global batch of ``batch_size * grad_accum * num_processes`` examples; of each micro-batch slice of
``batch_size * num_processes`` examples, process ``rank`` takes the ``rank``-th run of ``batch_size``
consecutive ones, so gathering all processes' micro-batches in rank order gives the one-process
micro-batch in its order (beta-DPO relies on this to draw the same pairs as one process).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch


@dataclass
class BatchPlan:
    n_examples: int
    batch_size: int
    grad_accum: int
    num_processes: int = 1
    seed: int = 0
    shuffle: bool = True
    lengths: Optional[List[int]] = None  # per-example lengths, for length_grouped
    length_grouped: bool = False  # micro-batches of similar lengths (dpolab.data.collate.length_grouped_indices)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_processes

    @property
    def drop_last(self) -> bool:
        # several processes must see the same number of micro-batches; one process keeps the tail
        return self.num_processes > 1

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return max(1, self.n_examples // self.global_batch)
        return max(1, math.ceil(self.n_examples / self.global_batch))

    def order(self, epoch: int) -> List[int]:
        if self.length_grouped:
            if self.lengths is None or len(self.lengths) != self.n_examples:
                raise ValueError("length_grouped batching needs one length per example")
            from ..data.collate import length_grouped_indices

            # seeded by (seed, epoch) like the shuffled order, so a resumed run sees the same batches
            seed = self.seed * 1_000_003 + epoch if self.shuffle else self.seed
            return length_grouped_indices(self.lengths, self.batch_size * self.num_processes, seed)
        if not self.shuffle:
            return list(range(self.n_examples))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=g).tolist()

    def step_indices(self, step: int) -> List[int]:
        """All example indices of global optimiser step ``step`` (0-based, counted across epochs)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        return order[k * self.global_batch: (k + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int) -> List[List[int]]:
        """This process's micro-batches for ``step``: ``grad_accum`` lists (the last ones may be short or empty)."""
        idx = self.step_indices(step)
        per_micro = self.batch_size * self.num_processes
        out = []
        for a in range(self.grad_accum):
            chunk = idx[a * per_micro: (a + 1) * per_micro]
            out.append(chunk[rank * self.batch_size: (rank + 1) * self.batch_size])
        return [m for m in out if m]


def epoch_of(step: int, plan: BatchPlan) -> float:
    return step / plan.steps_per_epoch


def iterate_in_batches(indices: List[int], batch_size: int) -> Iterator[List[int]]:
    for i in range(0, len(indices), batch_size):
        yield indices[i: i + batch_size]
