"""How rows are tokenised, shown token by token (``dpolab inspect-data``): the prompt, a boundary marker ``‖``, then
each response, every token as its vocabulary piece (``[▁Hello][,]``, ``[Ġworld]``), with counts and truncation.

The rows go through exactly the code training uses (:mod:`dpolab.data.formats` then :mod:`dpolab.data.tokenize`),
with the same options; each is tokenised a second time without a length limit to tell whether truncation cut it.
Mode ``prompt`` (``train.mode=online``) shows each row's prompt alone, exactly as the online objective samples from
it: :func:`dpolab.data.prompts.to_prompt` then :func:`~dpolab.data.prompts.tokenize_prompt` (a prompt-only row, text
or chat messages with the template's generation prompt, cut to ``max_prompt_length``; or a preference pair's prompt,
as preference training tokenises it). A bad row's line, in every mode, is the one the loader raises
(:mod:`dpolab.data.dataset`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from dpolab.data.dataset import _chat_rows, _located, _one_line, invalid_reason
from dpolab.data.formats import to_preference_row, to_sft_row
from dpolab.data.prompts import to_prompt, tokenize_prompt
from dpolab.data.sources import Source, iter_records, source_name
from dpolab.data.tokenize import (
    BOUNDARY_SEPARATE,
    TRUNCATION_MODES,
    BoundaryWarning,
    _check_lengths,
    tokenize_preference,
    tokenize_sft,
)
from dpolab.data.types import DataError, SkipCounter
from dpolab.errors import ConfigError, first_sentence

MODES = ("auto", "preference", "sft", "prompt")
BOUNDARY = "‖"
_UNLIMITED = 1 << 40
_SFT_FIELDS = ("completion", "messages", "text")


@dataclass
class InspectedRow:
    """One tokenised row: its parts (name -> ids, the prompt first) and their lengths before truncation."""

    row: Optional[int]
    parts: List[Tuple[str, List[int]]]
    full_lengths: Dict[str, int]
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> Dict[str, Tuple[int, int]]:
        """Part name -> (length before, length after) for the parts truncation cut."""
        return {
            name: (self.full_lengths[name], len(ids)) for name, ids in self.parts if len(ids) != self.full_lengths[name]
        }


@dataclass
class Inspection:
    mode: str
    rows: List[InspectedRow]
    read: int
    skips: SkipCounter
    errors: List[str]


def detect_mode(record: Any, columns: Optional[Mapping[str, str]] = None) -> str:
    """'preference' if the record has a chosen column, 'sft' if it has completion / messages / text, 'prompt' if it
    has a prompt and no response column at all, else preference."""
    columns = dict(columns or {})
    col = lambda f: columns.get(f, f)  # noqa: E731
    if not isinstance(record, Mapping) or col("chosen") in record:
        return "preference"
    if any(col(f) in record for f in _SFT_FIELDS):
        return "sft"
    return "prompt" if col("prompt") in record and col("rejected") not in record else "preference"


def inspect_data(
    source: Source,
    tokenizer: Any,
    *,
    rows: int = 3,
    mode: str = "auto",
    columns: Optional[Mapping[str, str]] = None,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    split: Optional[str] = None,
    add_bos: bool = True,
    add_eos: bool = True,
    max_errors: int = 3,
    data_format: str = "auto",
) -> Inspection:
    """Tokenise the first ``rows`` usable rows of ``source`` as training would; bad rows are counted, not raised.
    ``data_format`` (``data.format``) applies to preference and prompt rows, as their loaders apply it."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if rows < 1:
        raise ConfigError(f"rows must be >= 1, got {rows}")
    _check_lengths(max_length, max_prompt_length)
    if truncation_mode not in TRUNCATION_MODES:
        raise ConfigError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    name, skips, out, errors, read = source_name(source), SkipCounter(), [], [], 0
    chat = _chat_rows(tokenizer, data_format, name, log=lambda _: None)  # checks data_format too
    fmt = dict(data_format=data_format, chat=chat)
    opts = dict(max_prompt_length=max_prompt_length, truncation_mode=truncation_mode, add_bos=add_bos, add_eos=add_eos)
    for row, rec in iter_records(source, split=split):
        if len(out) >= rows:
            break
        read += 1
        if mode == "auto" and not isinstance(rec, DataError):
            mode = detect_mode(rec, columns)
        try:
            if isinstance(rec, DataError):
                raise rec
            if mode == "sft":
                item = to_sft_row(rec, source=name, row=row, columns=columns, skips=skips)
                tok, parts, uncut = tokenize_sft, ("completion_ids",), opts
            elif mode == "prompt":
                item = to_prompt(rec, source=name, row=row, columns=columns, skips=skips, **fmt)
                tok, parts = tokenize_prompt, ()
                uncut = dict(opts, max_prompt_length=None)  # a prompt alone is cut to max_prompt_length in any case
            else:
                item = to_preference_row(rec, source=name, row=row, columns=columns, skips=skips, **fmt)
                tok, parts, uncut = tokenize_preference, ("chosen_ids", "rejected_ids"), opts
            if item is None:
                continue
            try:
                with warnings.catch_warnings():  # the report flags each such row itself
                    warnings.simplefilter("ignore", BoundaryWarning)
                    t = tok(item, tokenizer, max_length=max_length, skips=skips, **opts)
                    full = tok(item, tokenizer, max_length=_UNLIMITED, **uncut) if t is not None else None
            except (ValueError, TypeError) as e:
                raise DataError(
                    f"cannot tokenise: {type(e).__name__}: {first_sentence(e)}", source=name, row=row
                ) from e
        except DataError as e:
            err = _one_line(_located(e, name, row))  # the loaders' one line
            skips.add(invalid_reason(err))
            if len(errors) < max_errors:
                errors.append(str(err))
            continue
        if t is None:
            continue
        full = full or t
        named = [("prompt", t.prompt_ids)] + [(p[:-4], getattr(t, p)) for p in parts]
        lengths = {"prompt": len(full.prompt_ids), **{p[:-4]: len(getattr(full, p)) for p in parts}}
        out.append(InspectedRow(row, named, lengths, dict(t.meta)))
    return Inspection("preference" if mode == "auto" else mode, out, read, skips, errors)


def _escape(piece: str) -> str:
    out = []
    for ch in piece:
        if ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def token_pieces(tokenizer: Any, ids: List[int]) -> List[str]:
    """Each id as its vocabulary piece (control characters escaped); an id with no piece shows as ``<id N>``."""
    toks = tokenizer.convert_ids_to_tokens(list(ids))
    return [_escape(t) if isinstance(t, str) else f"<id {i}>" for t, i in zip(toks, ids)]


def _show(pieces: List[str], ids: List[int], show_ids: bool) -> List[str]:
    return [f"[{p}:{i}]" if show_ids else f"[{p}]" for p, i in zip(pieces, ids)]


def _elide(cells: List[str], max_tokens: int, keep_end: bool) -> str:
    """Cells joined; when more than ``max_tokens``, the middle is replaced by ``…(+N)…`` (the end near the
    boundary is kept: the prompt's end, a response's start)."""
    if max_tokens <= 0 or len(cells) <= max_tokens:
        return "".join(cells)
    small = max(1, max_tokens // 4)
    head, tail = (small, max_tokens - small) if keep_end else (max_tokens - small, small)
    return "".join(cells[:head]) + f"…(+{len(cells) - head - tail})…" + "".join(cells[len(cells) - tail :])


def format_row(
    r: InspectedRow, tokenizer: Any, *, show_ids: bool = False, max_tokens: int = 64, context: int = 3
) -> str:
    """Lines for one row: a header with counts and truncation, the prompt, then each response after the last
    ``context`` prompt tokens and the boundary marker."""
    (_, prompt), responses = r.parts[0], r.parts[1:]
    counts = ", ".join([f"prompt {len(prompt)} tokens"] + [f"{n} {len(ids)}" for n, ids in responses])
    cut = r.truncated
    trunc = "truncated: " + ", ".join(f"{n} {a}->{b}" for n, (a, b) in cut.items()) if cut else "not truncated"
    notes = []
    if r.meta.get("boundary") == BOUNDARY_SEPARATE:
        notes.append("boundary: prompt tokens not a prefix of the joint tokens, response tokenised as a continuation")
    if r.meta.get("template_fallback"):
        notes.append("chat template not prefix-consistent: response is the message text")
    where = f"row {r.row}" if r.row is not None else "row"
    lines = [f"{where}: {counts}; {trunc}" + "".join(f"; {n}" for n in notes)]
    prompt_cells = _show(token_pieces(tokenizer, prompt), prompt, show_ids)
    width = max(len(n) for n, _ in r.parts) + 1
    lines.append(f"  {'prompt:':{width}s} {_elide(prompt_cells, max_tokens, keep_end=True) or '(empty)'}")
    seam = (
        ("…" if len(prompt_cells) > context else "") + "".join(prompt_cells[len(prompt_cells) - context :])
        if context
        else ""
    )
    for n, ids in responses:
        cells = _show(token_pieces(tokenizer, ids), ids, show_ids)
        lines.append(f"  {n + ':':{width}s} {seam} {BOUNDARY} {_elide(cells, max_tokens, keep_end=False)}")
    return "\n".join(lines)


def format_inspection(ins: Inspection, tokenizer: Any, *, show_ids: bool = False, max_tokens: int = 64) -> str:
    """The whole report: each row, then a summary (rows shown, skips, bad rows, boundary fallbacks)."""
    blocks = [format_row(r, tokenizer, show_ids=show_ids, max_tokens=max_tokens) for r in ins.rows]
    n_sep = sum(1 for r in ins.rows if r.meta.get("boundary") == BOUNDARY_SEPARATE)
    n_cut = sum(1 for r in ins.rows if r.truncated)
    summary = (
        f"{len(ins.rows)} {ins.mode} row(s) shown of {ins.read} read; {n_cut} truncated; "
        f"{n_sep} with the response tokenised apart from the prompt; {ins.skips.summary()}"
    )
    tail = [summary] + [f"bad row: {e}" for e in ins.errors]
    return "\n\n".join(blocks + ["\n".join(tail)])
