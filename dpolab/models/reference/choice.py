"""Which kind of reference a run gets: the one place ``reference.mode=auto`` is decided, with its cost figures.

Every objective with a reference goes through :func:`choose_reference`: preference training (a table when it is no
dearer than a live reference), KTO (live only: its mismatched pairs exist only within a step) and TR-DPO
(``reference.sync_every``: a frozen copy, the only kind that can follow the policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .base import ReferenceSetupError
from .live import AdapterOff, LiveCopy, SeparateModel
from .table import PrecomputedTable

KINDS = {k.mode: k for k in (LiveCopy, AdapterOff, SeparateModel, PrecomputedTable)}


@dataclass(frozen=True)
class ReferenceCost:
    """What the ``auto`` rule weighs: how many examples a live reference would score over the whole run
    (``live_examples``) and how many a table scores once (``once_examples``)."""

    live_examples: int
    once_examples: int


def reference_cost(
    *, steps: int, examples_per_step: int, eval_every: int, eval_at_start: bool, n_train: int, n_eval: int
) -> ReferenceCost:
    """The cost figures of a run of ``steps`` optimiser steps of ``examples_per_step`` examples (batch size x
    gradient accumulation x processes) that evaluates its ``n_eval`` held-out examples every ``eval_every`` steps
    (0: never), at the start if ``eval_at_start``, and once at the end; a table covers ``n_train + n_eval``."""
    n_evals = (steps // eval_every if eval_every else 0) + int(eval_at_start) + 1
    return ReferenceCost(live_examples=steps * examples_per_step + n_evals * n_eval, once_examples=n_train + n_eval)


@dataclass(frozen=True)
class Choice:
    """The kind (``copy``, ``adapter``, ``separate`` or ``precomputed``) and, when ``auto`` decided it, the log line
    that says so (None otherwise)."""

    kind: str
    note: Optional[str] = None


def choose_reference(
    mode: str,
    *,
    separate: bool,
    lora: bool,
    sync_every: int = 0,
    cost: Optional[ReferenceCost] = None,
    record: Optional[Dict[str, Any]] = None,
) -> Choice:
    """The kind of reference for ``reference.mode`` = ``mode``.

    ``separate``: ``reference.name_or_path`` is set; ``lora``: the policy has LoRA adapters; ``sync_every``:
    TR-DPO's ``reference.sync_every``; ``cost``: the run's figures (:func:`reference_cost`), or None when the
    objective can only use a live reference; ``record``: a resumed run's :meth:`Reference.record`, whose kind is
    kept whatever the rule would say now.

    ``auto``: with ``sync_every`` (and no separate model), a frozen copy TR-DPO can move; else a precomputed table
    when that scores no more examples than a live reference would over the run (about one epoch or more), which also
    frees the reference's memory; else live: the separate model, the adapter-disabled policy under LoRA, or a copy.
    An explicit mode is kept (a separate model, if one is named, stands in for ``copy`` and ``adapter``)."""
    live = "separate" if separate else ("adapter" if lora else "copy")
    if record:
        kind = record["mode"]
    elif mode == "auto" and sync_every and not separate:
        return Choice(
            "copy",
            "reference: live copy (reference.mode=auto with reference.sync_every: TR-DPO moves a "
            "frozen copy of the policy toward it)",
        )
    elif mode == "auto" and cost is None:
        return Choice(
            live,
            f"reference: live {live} (reference.mode=auto; this objective needs a live reference: "
            f"set reference.mode=copy or adapter to choose)",
        )
    elif mode == "auto":
        kind = "precomputed" if cost.live_examples >= cost.once_examples else live
        return Choice(
            kind,
            f"reference: {KINDS[kind].description} (reference.mode=auto; set reference.mode=copy, "
            f"adapter or precomputed to choose)",
        )
    elif mode == "adapter" and not lora:
        raise ReferenceSetupError(
            "reference.mode=adapter needs a LoRA policy (lora.enabled=true); use copy or precomputed"
        )
    else:
        kind = mode if mode == "precomputed" else ("separate" if separate else mode)
    if kind not in KINDS:
        raise ReferenceSetupError(f"unknown reference mode '{kind}'")
    if kind == "precomputed" and cost is None and not record:
        raise ReferenceSetupError("reference.mode=precomputed: this objective needs a live reference")
    return Choice(kind)
