"""Prompts for on-policy training (``train.mode=online``): rows of a ``prompt`` column alone, or preference pairs.

A record (any file the readers of :mod:`dpolab.data.sources` read: JSONL, JSON, CSV/TSV, parquet, a saved dataset)
gives one prompt:

- a prompt-only row: ``prompt`` (remapped with ``columns``) as text or chat messages (as preference files accept them;
  with ``data_format="hh"`` Anthropic-HH text, a trailing empty ``Assistant:`` turn dropped). The prompt's tokens are
  cut to ``max_prompt_length`` (default ``max_length // 2``) when longer, keeping its end (``keep_end``) or start,
  and the cut is recorded in ``meta["truncated_tokens"]`` as for pairs;
- a preference pair (``chosen`` and ``rejected`` present): its prompt, tokenised exactly as preference training
  tokenises the pair (:func:`dpolab.data.tokenize.tokenize_preference`; a pair skipped there, e.g. identical
  responses, gives no prompt and is counted).

A row without a usable prompt (no ``prompt`` and no pair, not text or messages, empty) is a :class:`DataError` naming
source, row and field (or, with ``on_error="skip"``, counted), as every loader of :mod:`dpolab.data.dataset` does.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Tuple

from dpolab.data.dataset import _chat_rows, _check_options, _limits, _load
from dpolab.data.formats import _Ctx, _is_empty, _meta, _text, _type_name, parse_hh, to_preference_row
from dpolab.data.sources import Source, source_name
from dpolab.data.tokenize import (
    TRUNCATED_TOKENS,
    _cut_prompt,
    _prompt_ids,
    render_texts,
    tokenize_preference,
)
from dpolab.data.types import DataError, PreferenceRow, SkipCounter, Text, TokenizedPrompt


def to_prompt(
    record: Mapping,
    *,
    source: Optional[str] = None,
    row: Optional[int] = None,
    columns: Optional[Mapping[str, str]] = None,
    skips: Optional[SkipCounter] = None,
    data_format: str = "auto",
    chat: bool = True,
) -> Optional[Tuple[Text, dict] | PreferenceRow]:
    """One record's prompt: ``(prompt, meta)`` for a prompt-only row, the validated :class:`PreferenceRow` for a pair
    (None if the pair is skipped by design, counted in ``skips``)."""
    ctx = _Ctx(source, row, columns)
    if not isinstance(record, Mapping):
        raise DataError(f"expected a record (dict), got {_type_name(record)}", source=source, row=row)
    has = lambda name: ctx.col(name) in record  # noqa: E731
    if has("chosen") and has("rejected"):
        return to_preference_row(
            record, source=source, row=row, columns=columns, skips=skips, data_format=data_format, chat=chat
        )
    if not has("prompt"):
        raise ctx.error(
            "prompt",
            f"missing: a prompt row needs 'prompt' (text or chat messages) or a preference pair's 'chosen' and "
            f"'rejected' (columns present: {', '.join(map(str, record)) or 'none'}; map yours with data.columns, "
            f"e.g. data.columns={{prompt: your_column}})",
        )
    prompt = _text(record, "prompt", ctx)
    if data_format == "hh":
        if not isinstance(prompt, str):
            raise ctx.error("prompt", "data.format=hh expects HH text, got chat messages")
        turns = parse_hh(prompt, "prompt", ctx)  # checked either way; kept as text without a chat template
        if chat:
            prompt = turns[:-1] if turns[-1]["role"] == "assistant" and not turns[-1]["content"] else turns
    if _is_empty(prompt):
        raise ctx.error("prompt", "empty prompt: nothing to sample a completion of")
    return prompt, _meta(record, [ctx.col("prompt")], row)


def tokenize_prompt(
    item: Any,
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedPrompt]:
    """The :class:`TokenizedPrompt` of :func:`to_prompt`'s result (a pair's prompt as its tokenisation has it)."""
    if isinstance(item, PreferenceRow):
        pair = tokenize_preference(
            item,
            tokenizer,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation_mode=truncation_mode,
            add_bos=add_bos,
            add_eos=add_eos,
            skips=skips,
        )
        return None if pair is None else TokenizedPrompt(list(pair.prompt_ids), dict(pair.meta))
    prompt, meta = item
    text, _, _ = render_texts(tokenizer, prompt, [])  # chat messages: the template with the generation prompt
    ids = _prompt_ids(tokenizer, text, add_bos)
    keep = max_length // 2 if max_prompt_length is None else max_prompt_length
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    cut = _cut_prompt(ids, keep, truncation_mode, bos)
    meta = dict(meta)
    if len(cut) < len(ids):
        meta[TRUNCATED_TOKENS] = {"prompt": len(ids) - len(cut)}
    if not cut:
        raise ValueError("the prompt has no tokens (after truncation to max_prompt_length)")
    return TokenizedPrompt(cut, meta)


def load_prompt_data(
    source: Source,
    tokenizer: Any,
    *,
    columns: Optional[Mapping[str, str]] = None,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    limit: Optional[int] = None,
    split: Optional[str] = None,
    transform: Optional[Callable[[dict], dict]] = None,
    on_error: str = "raise",
    log: Callable[[str], Any] = print,
    data_format: str = "auto",
) -> Tuple[List[TokenizedPrompt], SkipCounter]:
    """Load, validate and tokenise prompts (module docstring); returns them and the skip counts."""
    _check_options(max_length, max_prompt_length, truncation_mode)
    chat = _chat_rows(tokenizer, data_format, source_name(source), log)
    convert = lambda rec, **kw: to_prompt(rec, columns=columns, data_format=data_format, chat=chat, **kw)  # noqa: E731
    tokenize = lambda item, tok, skips: tokenize_prompt(  # noqa: E731
        item,
        tok,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        add_bos=add_bos,
        add_eos=add_eos,
        skips=skips,
    )
    return _load(
        source,
        tokenizer,
        convert=convert,
        tokenize=tokenize,
        check_options=lambda: _check_options(max_length, max_prompt_length, truncation_mode),
        split=split,
        transform=transform,
        limit=limit,
        on_error=on_error,
        log=log,
        kind="prompts",
        limits=_limits(max_length, max_prompt_length),
    )
