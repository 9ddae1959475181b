"""Deterministic, resumable batch order.

The order of epoch ``e`` is a permutation seeded by (seed, e), so a resumed run only needs the optimiser
step it stopped at to continue with exactly the batches it would have seen. An optimiser step consumes one
global batch of ``batch_size * grad_accum * num_processes`` examples; of each micro-batch slice of
``batch_size * num_processes`` examples, process ``rank`` takes the ``rank``-th run of ``batch_size``
consecutive ones, so gathering all processes' micro-batches in rank order gives the one-process
micro-batch in its order (beta-DPO relies on this to draw the same pairs as one process).

Several processes always get the same number of micro-batches, of the same sizes, at every step: their gradient
all-reduce and a batch-level loss's gathers (beta-DPO, AOT) are collectives every process must join. A training set
smaller than one global batch gives one short step; it is shared out evenly, each micro-batch slice split into equal
consecutive runs (the gathered order is still the one-process order), after dropping the last ``n mod
num_processes`` examples (as several processes drop an epoch's tail). :func:`eval_batches` shares the evaluation set
out by whole batches, so the gathered rows are one process's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

import torch

from .errors import TrainError


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
    # the order of the epoch the last step fell in: each step reads it twice (its units, then this process's
    # micro-batches), and consecutive steps share it; keyed by the epoch and the settings the order depends on
    _cached: Optional[Tuple[Any, List[int]]] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_processes > 1 and self.n_examples < self.num_processes:
            raise TrainError(
                f"{self.n_examples} training example(s) cannot be shared by {self.num_processes} "
                f"processes (each needs at least one): add data or launch fewer processes"
            )

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
        """The example order of ``epoch`` (computed afresh; :meth:`step_indices` reuses it within an epoch)."""
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
        idx = self._epoch_order(epoch)[k * self.global_batch : (k + 1) * self.global_batch]
        if self.drop_last:  # a short step (fewer examples than a global batch): a multiple of num_processes
            idx = idx[: len(idx) - len(idx) % self.num_processes]
        return idx

    def _epoch_order(self, epoch: int) -> List[int]:
        """:meth:`order`, computed once per epoch (the plan's fields are not expected to change, but if they do the
        order is recomputed)."""
        key = (
            epoch,
            self.n_examples,
            self.batch_size,
            self.num_processes,
            self.seed,
            self.shuffle,
            self.length_grouped,
            id(self.lengths),
        )
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.order(epoch))
        return self._cached[1]

    def micro_batches(self, step: int, rank: int) -> List[List[int]]:
        """This process's micro-batches for ``step``: up to ``grad_accum`` non-empty lists (a short step has fewer or
        smaller ones); every rank gets as many, of the same sizes (each slice of the step is split evenly)."""
        idx = self.step_indices(step)
        per_micro = self.batch_size * self.num_processes
        out = []
        for a in range(self.grad_accum):
            chunk = idx[a * per_micro : (a + 1) * per_micro]
            share = len(chunk) // self.num_processes  # batch_size, except in a short step's slices
            out.append(chunk[rank * share : (rank + 1) * share])
        return [m for m in out if m]


def iterate_in_batches(indices: List[int], batch_size: int) -> Iterator[List[int]]:
    for i in range(0, len(indices), batch_size):
        yield indices[i : i + batch_size]


def eval_batches(
    n_examples: int, batch_size: int, rank: int = 0, num_processes: int = 1
) -> List[Tuple[int, List[int]]]:
    """This process's share of an evaluation pass: (batch number, indices) of the one-process batches (consecutive
    runs of ``batch_size``) whose number is ``rank`` modulo ``num_processes``. The processes' shares are disjoint
    and together the one-process batches, so rows gathered and sorted by batch number are one process's rows."""
    batches = list(enumerate(iterate_in_batches(list(range(n_examples)), batch_size)))
    return batches[rank::num_processes]
