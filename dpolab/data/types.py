"""Row and batch types shared by the data pipeline, the engine and the tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from ..errors import UserError

Messages = List[Dict[str, str]]  # chat messages: [{"role": "user", "content": "..."}, ...]
Text = Union[str, Messages]


class DataError(UserError, ValueError):
    """A bad input row or file. ``str(err)`` is one line naming the file, the row and the field."""

    def __init__(
        self, message: str, *, source: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None
    ):
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.source, self.row, self.field, self.reason = source, row, field, message
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


@dataclass
class PreferenceRow:
    """One preference pair after validation. ``prompt`` may be '' (implicit prompt already split off)."""

    prompt: Text
    chosen: Text
    rejected: Text
    extras: Dict[str, float] = field(default_factory=dict)  # e.g. rm_margin for MADPO
    meta: Dict[str, Any] = field(default_factory=dict)  # passthrough (ids, buckets), never fed to a loss


@dataclass
class SFTRow:
    """One supervised row: the loss covers ``completion`` only (``prompt`` may be '' for plain text)."""

    prompt: Text
    completion: Text
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class UnpairedRow:
    """One unpaired row (KTO): a completion labelled desirable (``label`` True) or undesirable (False)."""

    prompt: Text
    completion: Text
    label: bool
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedPair:
    """Token ids; the full chosen sequence is prompt_ids + chosen_ids (prompt is a token prefix)."""

    prompt_ids: List[int]
    chosen_ids: List[int]
    rejected_ids: List[int]
    extras: Dict[str, float] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedSFT:
    prompt_ids: List[int]
    completion_ids: List[int]
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedUnpaired:
    """A tokenised unpaired row: ``prompt_ids + completion_ids`` as in :class:`TokenizedSFT`, plus its label."""

    prompt_ids: List[int]
    completion_ids: List[int]
    label: bool
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedPrompt:
    """A prompt to sample completions from (``train.mode=online``): its token ids, as generation is fed them."""

    prompt_ids: List[int]
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SkipCounter:
    """Rows skipped by design, by reason; reported in the log, never silent. ``notes`` counts rows kept but read in
    a way worth saying (e.g. HH rows whose earlier turns differ), by what was done."""

    counts: Dict[str, int] = field(default_factory=dict)
    notes: Dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        kept = "".join(f"; {n} {what}" for what, n in sorted(self.notes.items()))
        if not self.counts:
            return "no rows skipped" + kept
        return "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items())) + kept
