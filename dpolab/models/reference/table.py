"""The ``precomputed`` kind: log-probs scored once before training, kept on disk under their key
(:mod:`.key`), then looked up by example index (no reference model stays in memory).

LD-DPO (:mod:`dpolab.losses.length`) needs more than each response's sum: the table stores, for each response, the sum
over the pair's first ``min(|y_w|, |y_l|)`` response tokens (``chosen_shared`` / ``rejected_shared``; the rest is the
sum minus it)."""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from ... import atomic
from ...data.collate import pair_length
from ...data.types import TokenizedPair
from ...losses.length import shared_tail
from ..fastpath import logps_for_batch
from ..logprobs import SequenceLogps, split_pairs
from ..unwrap import unwrap
from .base import Reference, ReferenceSetupError
from .key import TABLE_COLUMNS


class PrecomputedTable(Reference):
    """The table's columns (:data:`TABLE_COLUMNS`, [N] each) looked up by the batch's ``index``; ``cache_file`` and
    ``key`` are where it lies and what it was scored under (a resumed run loads exactly that file)."""

    mode = "precomputed"
    description = "log-probs precomputed once"

    def __init__(
        self, table: Dict[str, Tensor], *, cache_file: Optional[Path] = None, key: Optional[Dict[str, str]] = None
    ):
        self.table = table
        self.cache_file = cache_file
        self.key = key

    def logps(self, batch: Any, autocast: Callable = nullcontext) -> tuple[Tensor, Tensor]:
        return self._lookup(batch, "chosen"), self._lookup(batch, "rejected")

    def split_logps(self, batch: Any, autocast: Callable = nullcontext) -> Dict[str, Tensor]:
        self.check_split()
        return dict(
            ref_chosen_logps=self._lookup(batch, "chosen"),
            ref_rejected_logps=self._lookup(batch, "rejected"),
            ref_chosen_shared_logps=self._lookup(batch, "chosen_shared"),
            ref_rejected_shared_logps=self._lookup(batch, "rejected_shared"),
        )

    def check_split(self) -> None:
        missing = [c for c in TABLE_COLUMNS if c not in self.table]
        if missing:
            raise ReferenceSetupError(
                f"the precomputed reference table {self.cache_file} has no {', '.join(missing)} "
                f"column (written by an older dpolab), which LD-DPO needs; start a new run"
            )

    def record(self) -> Dict[str, Any]:
        return {"mode": self.mode, "cache_file": str(self.cache_file) if self.cache_file else None, "key": self.key}

    def _lookup(self, batch: Any, column: str) -> Tensor:
        return self.table[column][batch.index.cpu()].to(batch.input_ids.device)


# -- the table's file -------------------------------------------------------------------------------------------
def _table_digest(table: Dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in TABLE_COLUMNS:
        if name in table:  # a table of an older format has the first two only
            h.update(table[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_table(path: Path, key: Dict[str, str], table: Dict[str, Tensor]) -> None:
    atomic.torch_save({"key": key, "sha256": _table_digest(table), **table}, path)


def load_table(
    path: Path, key: Dict[str, str], log: Callable[[str], None] = lambda s: None
) -> Optional[Dict[str, Tensor]]:
    """The table in ``path`` if it was written under exactly ``key`` and its values match the checksum stored with
    them; None (with a notice for a file that is there but unusable) otherwise."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        table = {"chosen": saved["chosen"], "rejected": saved["rejected"]}
        table.update({c: saved[c] for c in TABLE_COLUMNS[2:] if c in saved})  # absent in a resumed older run's table
        problem = (
            "it was written for other weights, dtype, data or settings"
            if saved.get("key") != key
            else "its values do not match their checksum"
            if saved.get("sha256") != _table_digest(table)
            else None
        )
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is recomputed, not trusted
        problem = f"it cannot be read ({type(e).__name__})"
    if problem:
        log(f"reference: not using the cached table {path}: {problem}; recomputing it")
        return None
    return table


# -- scoring it -------------------------------------------------------------------------------------------------
def score_table(model, adapter_off: bool, data: Sequence, tools) -> Dict[str, Tensor]:
    """Every column for every example of ``data``, scored by ``model`` (its adapters off when ``adapter_off``) in
    the batches of :func:`table_batches`; ``tools`` is the run's :class:`~.build.ReferenceTools`."""
    n = len(data)
    table = {c: torch.full((n,), float("nan")) for c in TABLE_COLUMNS}
    pol = unwrap(model)
    was_training = pol.training
    pol.eval()
    off = pol.disable_adapter if adapter_off else nullcontext
    lengths = [pair_length(d) for d in data] if all(isinstance(d, TokenizedPair) for d in data) else None
    order = table_batches(n, tools.batch_size, tools.batch_starts, lengths)
    batches: Iterable = (tools.collate(idx, data) for idx in order)
    bar = tools.progress(None, desc="reference log-probs", total=n, unit=" pairs", dynamic_ncols=True)  # pairs/s
    try:
        with torch.no_grad(), off():
            for batch in batches:
                with tools.autocast():
                    lp = logps_for_batch(pol, batch, logits=tools.logits)
                idx = batch.index.cpu()
                for name, values in _table_rows(lp, batch.num_pairs).items():
                    table[name][idx] = values.float().cpu()
                bar.update(len(idx))
    finally:
        bar.close()
        pol.train(was_training)
    if any(torch.isnan(v).any() for v in table.values()):
        raise RuntimeError("precomputed reference table has gaps: some examples were never scored")
    return table


def table_batches(
    n: int, batch_size: int, starts: Sequence[int] = (0,), lengths: Optional[Sequence[int]] = None
) -> List[List[int]]:
    """The index batches a table is scored in: runs of ``batch_size`` that start afresh at each of ``starts`` (a
    segment [start, next start) is batched like a dataset of its own, as evaluation batches it: consecutive). With
    ``lengths`` and more than one segment, the first (the training examples, which no evaluation batch reproduces)
    is scored longest first, as ``dpolab eval`` scores, so that a batch pads to pairs of similar length."""
    edges = sorted({0, n, *(s for s in starts if 0 < s < n)})
    segments = [list(range(start, end)) for start, end in zip(edges, edges[1:])]
    if lengths is not None and len(segments) > 1:
        segments[0].sort(key=lambda i: (-lengths[i], i))
    return [seg[i : i + batch_size] for seg in segments for i in range(0, len(seg), batch_size)]


def _table_rows(lp: SequenceLogps, n: int) -> Dict[str, Tensor]:
    """A batch's table columns: each response's sum, and its sum over the pair's shared length min(|y_w|, |y_l|)."""
    (c, r), (tc, tr), (mc, mr) = split_pairs(lp.sums, n), split_pairs(lp.token_logps, n), split_pairs(lp.token_mask, n)
    shared = torch.minimum(mc.sum(-1), mr.sum(-1))
    return {
        "chosen": c,
        "rejected": r,
        "chosen_shared": shared_tail(tc, mc, shared)[0],
        "rejected_shared": shared_tail(tr, mr, shared)[0],
    }
