"""Building the chosen kind of reference (:func:`build_reference`), and what it needs of the run."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ...progress import progress_bar
from ..lowp import keep_frozen_casts
from ..unwrap import unwrap
from . import table as tables
from .base import Reference, ReferenceSetupError
from .choice import Choice, ReferenceCost
from .key import key_digest, table_key
from .live import AdapterOff, LiveCopy, SeparateModel
from .table import PrecomputedTable


@dataclass
class ReferenceRequest:
    """What the engine knows when it asks for a reference.

    ``mode``: auto | copy | adapter | precomputed (``reference.mode``); ``separate``: another model's path or None;
    ``lora``: the policy has LoRA adapters; ``cache_dir``: where tables are kept; ``bf16``: bf16 autocast is on;
    ``sync_every``: TR-DPO's ``reference.sync_every``; ``cost``: the run's cost figures
    (:func:`~.choice.reference_cost`), None when the objective can only use a live reference."""

    mode: str
    separate: Optional[str]
    lora: bool
    cache_dir: Path
    bf16: bool = False
    sync_every: int = 0
    cost: Optional[ReferenceCost] = None


@dataclass
class ReferenceTools:
    """How the provider reaches the rest of the run without depending on it.

    ``collate(indices, data)`` makes a preference batch of ``data[i]`` (carrying ``index`` = position in ``data``),
    already on ``device``; ``load_start()`` rebuilds the policy's starting weights (a resumed full fine-tuning run);
    ``load_separate()`` loads ``reference.name_or_path``; ``main_first`` is a context in which the main process goes
    first (it writes the cache, the others then read it); ``batch_starts``: the indices of ``data`` where the table's
    batching starts afresh (the engine gives the first held-out example's, so the table scores the held-out pairs in
    the evaluation's own batches: same padding and packing, so at step 0 the live policy reproduces the table bit
    for bit wherever the same batch gives the same numbers, whatever the dtype); ``progress(iterable or None, **tqdm
    options)`` makes the run's progress bars (:func:`dpolab.progress.progress_bar`, off by default); ``logits``: the
    LM-head path (``train.logits``) the live kinds and the table's scoring use, as the policy does."""

    device: torch.device
    collate: Callable[[List[int], Sequence], Any]
    load_start: Callable[[], Any]
    load_separate: Callable[[], Any]
    batch_size: int = 16
    autocast: Callable = nullcontext
    log: Callable[[str], None] = lambda s: None
    progress: Callable = partial(progress_bar, enabled=False)
    main_first: Callable = nullcontext
    batch_starts: Sequence[int] = (0,)
    logits: str = "response"


def build_reference(
    choice: Choice,
    req: ReferenceRequest,
    policy,
    data: Sequence,
    tools: ReferenceTools,
    *,
    resuming: bool = False,
    record: Optional[Dict[str, Any]] = None,
) -> Reference:
    """The run's reference of the kind :func:`~.choice.choose_reference` chose, every model of it on
    ``tools.device``; its ``note`` (how ``auto`` decided) goes to ``tools.log``.

    ``policy`` is the prepared policy (on its device). ``data`` is every example the run will score (train then
    eval), which a precomputed table covers. ``resuming``: the policy already holds a checkpoint's weights, so a
    copy of the starting weights is rebuilt rather than copied. ``record`` is the :meth:`Reference.record` stored in
    that checkpoint: a precomputed run loads exactly the table file recorded there (it is recomputed from the
    starting weights, with a notice, if that file is gone or does not match its key)."""
    if choice.note:
        tools.log(choice.note)
    _frozen(policy, req)  # its frozen weights (LoRA's base layers, which the adapter-off reference runs through too)
    if choice.kind == "adapter":
        return AdapterOff(policy, logits=tools.logits)
    if choice.kind == "separate":
        return SeparateModel(_frozen(tools.load_separate().to(tools.device), req), logits=tools.logits)
    if choice.kind == "copy":  # a resumed run's policy holds trained weights: rebuild the starting ones
        start = tools.load_start() if resuming else copy.deepcopy(unwrap(policy))
        return LiveCopy(_frozen(start.to(tools.device), req), logits=tools.logits)
    if choice.kind != "precomputed":
        raise ReferenceSetupError(f"unknown reference mode '{choice.kind}'")
    return _precomputed(req, policy, data, tools, resuming, record or {})


def _frozen(model, req: ReferenceRequest):
    """``model`` with, under bf16 autocast, its frozen matrix weights cast once and kept, not in every forward (the
    same bits: :mod:`dpolab.models.lowp`)."""
    if req.bf16:
        keep_frozen_casts(model)
    return model


def _source(req: ReferenceRequest, policy, tools: ReferenceTools, resuming: bool):
    """(source name, model to score with, whether adapters must be off). A resumed full fine-tuning run rebuilds
    the starting weights (the policy has moved); an adapter run disables the adapters of the policy itself."""
    if req.separate:
        return "separate", tools.load_separate().to(tools.device), False
    if req.lora:
        return "adapter", policy, True
    if resuming:
        return "copy", tools.load_start().to(tools.device), False
    return "copy", policy, False


def _precomputed(
    req: ReferenceRequest, policy, data: Sequence, tools: ReferenceTools, resuming: bool, record: Dict[str, Any]
) -> PrecomputedTable:
    recorded_file, recorded_key = record.get("cache_file"), record.get("key")
    if recorded_file and recorded_key:
        table = tables.load_table(Path(recorded_file), recorded_key, tools.log)
        if table is not None:
            return PrecomputedTable(table, cache_file=Path(recorded_file), key=recorded_key)
        if not Path(recorded_file).exists():
            tools.log(
                f"reference: the table recorded in the checkpoint ({recorded_file}) is gone; recomputing it "
                f"from the starting weights"
            )
    name, model, adapter_off = _source(req, policy, tools, resuming)
    key = table_key(name, model, data, bf16=req.bf16)
    if recorded_key and key != recorded_key:
        changed = sorted(k for k in key if key[k] != recorded_key.get(k))
        raise ReferenceSetupError(
            f"cannot resume: the reference has changed since the run started "
            f"({', '.join(changed)} differ from the checkpoint's record); start a new run or "
            f"restore the original files"
        )
    cache_file = Path(recorded_file) if recorded_file else req.cache_dir / f"ref-{key_digest(key)}.pt"
    with tools.main_first():  # the main process computes and writes the table; the others then read it
        table = tables.load_table(cache_file, key, tools.log if not recorded_file else (lambda m: None))  # said above
        if table is None:
            table = tables.score_table(model, adapter_off, data, tools)
            tables.save_table(cache_file, key, table)
    return PrecomputedTable(table, cache_file=cache_file, key=key)
