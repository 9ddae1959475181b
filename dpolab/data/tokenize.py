"""Tokenise validated rows: prompt and each response separately, then concatenated.

Invariants of every :class:`TokenizedPair` / :class:`TokenizedSFT` produced here:

- the prompt is a token prefix of every full sequence (``prompt_ids + chosen_ids``): ``prompt_ids`` is the
  prompt tokenised alone (``add_special_tokens=False``, plus BOS), exactly what generation is fed;
- the response ids are what the model produces after ``prompt_ids`` (see "The boundary" below);
- at most one BOS, at the start of the prompt (only if the tokenizer has one, ``add_bos`` is set and
  the rendered prompt does not already start with it); a response never gets one;
- each response ends with EOS, once (if the tokenizer has one and ``add_eos`` is set; not added when it is
  already the last token, nor when a chat template's rendering of the turn already holds it, e.g. ChatML's
  ``<|im_end|>`` or Mistral's ``</s>``) unless the response was cut by truncation;
- every response has at least one token a model can score (a token with something before it: the prompt or
  BOS): rows whose response has no token (before EOS), or only one token and no prompt token in front of it
  (an empty prompt without BOS), or loses all its scorable tokens to truncation (e.g. a prompt cut to nothing
  by ``max_prompt_length=0``) are skipped, with the reason counted in ``skips``. Such a row would otherwise give
  a batch with no scored token, hence no gradient.

Chat rows (message lists) are rendered with ``tokenizer.apply_chat_template``: the prompt with
``add_generation_prompt=True``; a response as ``render(prompt + response)`` minus ``render(prompt)``.
If the template is not prefix-consistent (the full rendering does not start with the prompt rendering,
e.g. templates that rewrite earlier turns), the response falls back to its message contents alone,
joined by newlines, and ``meta["template_fallback"]`` is set to True.

The boundary. The response is tokenised together with its prompt, ``tokenize(prompt + response)``, and split at
the prompt's token count: when the prompt's own tokens are a prefix of those joint tokens (the usual case), the
rest are the response ids, the canonical tokenisation of the whole text (so a SentencePiece dummy-prefix "▁" is
neither added to a response glued to its prompt nor lost from one that starts with a space). When they are not a
prefix, because the tokenizer merges across the boundary (a prompt ending in a space or "\n\n" whose last token
joins the response's first word, e.g. GPT-2 ``["Hello", "Ġ"]`` vs ``["Hello", "Ġworld"]``, or SentencePiece
``["▁Hello", "▁"]`` vs ``["▁Hello", "▁world"]``), the prompt keeps its own tokens (they are what generation is
fed) and the response is tokenised alone *as a continuation*: without the dummy prefix a SentencePiece tokenizer
puts at the start of a text, so ``decode(prompt_ids + response_ids) == prompt + response``. Such rows get
``meta["boundary"] = "separate"``; a :class:`BoundaryWarning` is issued once per tokenizer and
:func:`boundary_note` counts them for a load summary.

Truncation (only when ``len(prompt) + len(longest response) > max_length``): the prompt is first cut to
``max_prompt_length`` (default ``max_length // 2``) tokens, keeping its end (``keep_end``: the tokens
nearest the response, BOS kept in front) or its start (``keep_start``); then each response is cut from the
right to fit ``max_length``. A row that truncation cut records the tokens removed per part in
``meta["truncated_tokens"]`` (e.g. ``{"prompt": 40, "chosen": 3}``; :mod:`dpolab.data.truncation_report` sums them up
per split for the load log and the run summary).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Iterable, List, Optional, Tuple

from dpolab.data.types import (
    Messages,
    PreferenceRow,
    SFTRow,
    SkipCounter,
    Text,
    TokenizedPair,
    TokenizedSFT,
    TokenizedUnpaired,
    UnpairedRow,
)
from dpolab.errors import ConfigError

TRUNCATION_MODES = ("keep_end", "keep_start")
SKIP_EMPTY_TOKENS = "empty response (no tokens)"
SKIP_EMPTY_TRUNCATED = "empty response after truncation"
TRUNCATED_TOKENS = "truncated_tokens"  # meta key: {part: tokens truncation removed} of a row it cut
BOUNDARY_SEPARATE = "separate"  # meta["boundary"] of a row whose response could not be split off the joint tokens
_ANCHORS = ("\n", ".", "a")  # texts put before a response to tokenise it as a continuation (first that works)


class BoundaryWarning(UserWarning):
    """Some rows' prompt tokens are not a prefix of prompt+response tokenised together (issued once per tokenizer)."""


_warned: "weakref.WeakSet[Any]" = weakref.WeakSet()
_dummy_prefix: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
SKIP_UNSCORABLE = "response with no token to score (one token, no prompt or BOS before it)"


def _encode(tokenizer: Any, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _render(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat-message rows need a tokenizer with a chat template (tokenizer.chat_template is unset)")
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_texts(tokenizer: Any, prompt: Text, responses: List[Text]) -> Tuple[str, List[str], bool]:
    """Plain text for the prompt and each response; the flag is True if the template fallback was used."""
    if not isinstance(prompt, list):
        return prompt, list(responses), False
    prompt_text = _render(tokenizer, prompt, add_generation_prompt=True)
    out, fallback = [], False
    for resp in responses:
        full = _render(tokenizer, prompt + resp, add_generation_prompt=False)
        if full.startswith(prompt_text) and len(full) > len(prompt_text):
            out.append(full[len(prompt_text) :])
        else:
            out.append("\n".join(m["content"] for m in resp))
            fallback = True
    return prompt_text, out, fallback


def _prompt_ids(tokenizer: Any, text: str, add_bos: bool, ids: Optional[List[int]] = None) -> List[int]:
    ids = _encode(tokenizer, text) if ids is None else list(ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _adds_dummy_prefix(tokenizer: Any) -> bool:
    """True if the tokenizer marks the start of a text (SentencePiece's "▁" dummy prefix): "a" alone is tokenised
    differently from "a" after a newline."""
    try:
        return _dummy_prefix[tokenizer]
    except (KeyError, TypeError):
        pass
    nl, probe = _encode(tokenizer, "\n"), "a"
    after = _encode(tokenizer, "\n" + probe)
    out = after[: len(nl)] == nl and after[len(nl) :] != _encode(tokenizer, probe)
    try:
        _dummy_prefix[tokenizer] = out
    except TypeError:
        pass
    return out


def encode_continuation(tokenizer: Any, text: str) -> List[int]:
    """Token ids of ``text`` as it continues a sequence: no SentencePiece dummy-prefix "▁" at its start.

    For a tokenizer without a dummy prefix (byte-level BPE: GPT-2, Qwen, Llama 3) this is plain tokenisation; otherwise
    ``text`` is tokenised after an anchor (a newline) whose tokens are then dropped."""
    plain = _encode(tokenizer, text)
    if not plain or not _adds_dummy_prefix(tokenizer):
        return plain
    for anchor in _ANCHORS:
        a, j = _encode(tokenizer, anchor), _encode(tokenizer, anchor + text)
        if a and j[: len(a)] == a and len(j) > len(a):
            return j[len(a) :]
    return plain


def split_response(tokenizer: Any, prompt_text: str, prompt_tokens: List[int], text: str) -> Tuple[List[int], bool]:
    """The response's ids after ``prompt_tokens`` (the prompt tokenised alone) and whether they came from the joint
    tokenisation (True) or, the prompt's tokens not being a prefix of the joint ones, from the continuation (False)."""
    if not text:
        return [], True
    joint = _encode(tokenizer, prompt_text + text)
    n = len(prompt_tokens)
    if joint[:n] == prompt_tokens and len(joint) > n:
        return joint[n:], True
    return encode_continuation(tokenizer, text), False


def _with_eos(tokenizer: Any, ids: List[int], add_eos: bool, templated: bool) -> List[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if not ids or not add_eos or eos is None or ids[-1] == eos or (templated and eos in ids):
        return ids
    return ids + [eos]


def _warn_separate(tokenizer: Any) -> None:
    try:
        if tokenizer in _warned:
            return
        _warned.add(tokenizer)
    except TypeError:
        pass
    warnings.warn(
        f"{type(tokenizer).__name__}: for some rows the prompt's tokens are not a prefix of prompt+response tokenised "
        "together (the tokenizer merges across the boundary, e.g. a prompt ending in a space); the prompt keeps its "
        "own "
        "tokens and those responses are tokenised as a continuation (meta['boundary'] = 'separate'; `dpolab "
        "inspect-data` "
        "shows them). This warning is issued once per tokenizer; ending prompts without a trailing space usually "
        "avoids it.",
        BoundaryWarning,
        stacklevel=4,
    )


def boundary_note(items: Iterable[Any]) -> Optional[str]:
    """One line counting the tokenised rows whose response was tokenised apart from its prompt; None if none."""
    items = list(items)
    n = sum(1 for t in items if getattr(t, "meta", {}).get("boundary") == BOUNDARY_SEPARATE)
    if not n:
        return None
    return (
        f"{n} of {len(items)} rows: prompt tokens not a prefix of prompt+response tokens (boundary merge, e.g. a "
        "trailing space); their responses were tokenised as a continuation of the prompt tokens"
    )


def _cut_prompt(ids: List[int], keep: int, mode: str, bos: Optional[int]) -> List[int]:
    if len(ids) <= keep:
        return ids
    if mode == "keep_start":
        return ids[:keep]
    if bos is not None and ids and ids[0] == bos and keep >= 1:
        return [bos] + (ids[len(ids) - keep + 1 :] if keep > 1 else [])
    return ids[len(ids) - keep :] if keep > 0 else []


def truncate(
    prompt: List[int],
    responses: List[List[int]],
    *,
    max_length: int,
    max_prompt_length: Optional[int],
    truncation_mode: str,
    bos: Optional[int] = None,
) -> Tuple[List[int], List[List[int]]]:
    """Apply the truncation rule of the module docstring; responses may come back empty (caller skips)."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ConfigError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if len(prompt) + max(len(r) for r in responses) <= max_length:
        return prompt, responses
    keep = max_length // 2 if max_prompt_length is None else max_prompt_length
    prompt = _cut_prompt(prompt, min(keep, max_length), truncation_mode, bos)
    room = max(max_length - len(prompt), 0)
    return prompt, [r[:room] for r in responses]


def _check_lengths(max_length: int, max_prompt_length: Optional[int]) -> None:
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if max_prompt_length is not None and not 0 <= max_prompt_length < max_length:
        raise ConfigError(
            f"max_prompt_length must be in [0, max_length), got {max_prompt_length} (max_length={max_length})"
        )


def _scorable(prompt: List[int], response: List[int]) -> bool:
    """Whether ``prompt + response`` has a response token the model predicts (the first token of a sequence has
    no position before it, so it is never scored)."""
    return len(response) >= (1 if prompt else 2)


def _skip(skips: Optional[SkipCounter], reason: str) -> None:
    if skips is not None:
        skips.add(reason)


def _tokenize(tokenizer, prompt, responses, *, max_length, max_prompt_length, truncation_mode, add_bos, add_eos, skips):
    _check_lengths(max_length, max_prompt_length)
    prompt_text, texts, fallback = render_texts(tokenizer, prompt, responses)
    prompt_tokens = _encode(tokenizer, prompt_text)
    prompt_ids = _prompt_ids(tokenizer, prompt_text, add_bos, prompt_tokens)
    split = [split_response(tokenizer, prompt_text, prompt_tokens, t) for t in texts]
    templated = isinstance(prompt, list) and not fallback
    resp_ids = [_with_eos(tokenizer, ids, add_eos, templated) for ids, _ in split]
    separate = not all(joint for _, joint in split)
    if any(not r for r in resp_ids):
        return _skip(skips, SKIP_EMPTY_TOKENS)
    if not all(_scorable(prompt_ids, r) for r in resp_ids):
        return _skip(skips, SKIP_UNSCORABLE)
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    before = [len(prompt_ids)] + [len(r) for r in resp_ids]
    prompt_ids, resp_ids = truncate(
        prompt_ids,
        resp_ids,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        bos=bos,
    )
    if not all(_scorable(prompt_ids, r) for r in resp_ids):
        return _skip(skips, SKIP_EMPTY_TRUNCATED)
    if separate:
        _warn_separate(tokenizer)
    cut = [b - len(ids) for b, ids in zip(before, [prompt_ids, *resp_ids])]
    return prompt_ids, resp_ids, _row_flags(fallback, separate), cut


def _row_flags(fallback: bool, separate: bool) -> dict:
    flags: dict = {"template_fallback": True} if fallback else {}
    if separate:
        flags["boundary"] = BOUNDARY_SEPARATE
    return flags


def _cut_flags(names: Tuple[str, ...], cut: List[int]) -> dict:
    """``{"truncated_tokens": {part: tokens removed}}`` for the parts truncation cut (empty when none was)."""
    removed = {name: n for name, n in zip(names, cut) if n > 0}
    return {TRUNCATED_TOKENS: removed} if removed else {}


def tokenize_preference(
    row: PreferenceRow,
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedPair]:
    """Tokenise one pair; ``None`` (reason counted in ``skips``) if a response ends up empty."""
    out = _tokenize(
        tokenizer,
        row.prompt,
        [row.chosen, row.rejected],
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        add_bos=add_bos,
        add_eos=add_eos,
        skips=skips,
    )
    if out is None:
        return None
    prompt_ids, (chosen_ids, rejected_ids), flags, cut = out
    meta = dict(row.meta, **flags, **_cut_flags(("prompt", "chosen", "rejected"), cut))
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, extras=dict(row.extras), meta=meta)


def tokenize_sft(
    row: SFTRow,
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedSFT]:
    """Tokenise one SFT row (loss on the completion); ``None`` if the completion ends up empty."""
    out = _tokenize(
        tokenizer,
        row.prompt,
        [row.completion],
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        add_bos=add_bos,
        add_eos=add_eos,
        skips=skips,
    )
    if out is None:
        return None
    prompt_ids, (completion_ids,), flags, cut = out
    meta = dict(row.meta, **flags, **_cut_flags(("prompt", "completion"), cut))
    return TokenizedSFT(prompt_ids, completion_ids, meta=meta)


def tokenize_unpaired(
    row: UnpairedRow,
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    add_bos: bool = True,
    add_eos: bool = True,
    skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedUnpaired]:
    """Tokenise one unpaired (KTO) row exactly as an SFT row, keeping its label; ``None`` if the completion ends up
    empty."""
    out = tokenize_sft(
        SFTRow(row.prompt, row.completion, meta=row.meta),
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        add_bos=add_bos,
        add_eos=add_eos,
        skips=skips,
    )
    return (
        None if out is None else TokenizedUnpaired(out.prompt_ids, out.completion_ids, bool(row.label), meta=out.meta)
    )
