"""Tokenise validated rows: prompt and each response separately, then concatenated.

Invariants of every :class:`TokenizedPair` / :class:`TokenizedSFT` produced here:

- the prompt is a token prefix of every full sequence (``prompt_ids + chosen_ids``), because the parts
  are tokenised separately with ``add_special_tokens=False`` and concatenated;
- at most one BOS, at the start of the prompt (only if the tokenizer has one, ``add_bos`` is set and
  the rendered prompt does not already start with it);
- each response ends with EOS (if the tokenizer has one, ``add_eos`` is set and it is not already the
  last token) unless the response was cut by truncation;
- no response is ever empty: rows whose response has no token (before EOS) or loses all its tokens to
  truncation are skipped, with the reason counted in ``skips``.

Chat rows (message lists) are rendered with ``tokenizer.apply_chat_template``: the prompt with
``add_generation_prompt=True``; a response as ``render(prompt + response)`` minus ``render(prompt)``.
If the template is not prefix-consistent (the full rendering does not start with the prompt rendering,
e.g. templates that rewrite earlier turns), the response falls back to its message contents alone,
joined by newlines, and ``meta["template_fallback"]`` is set to True.

Truncation (only when ``len(prompt) + len(longest response) > max_length``): the prompt is first cut to
``max_prompt_length`` (default ``max_length // 2``) tokens, keeping its end (``keep_end``: the tokens
nearest the response, BOS kept in front) or its start (``keep_start``); then each response is cut from the
right to fit ``max_length``.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from dpolab.errors import ConfigError
from dpolab.data.types import Messages, PreferenceRow, SFTRow, SkipCounter, Text, TokenizedPair, TokenizedSFT

TRUNCATION_MODES = ("keep_end", "keep_start")
SKIP_EMPTY_TOKENS = "empty response (no tokens)"
SKIP_EMPTY_TRUNCATED = "empty response after truncation"


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
            out.append(full[len(prompt_text):])
        else:
            out.append("\n".join(m["content"] for m in resp))
            fallback = True
    return prompt_text, out, fallback


def _prompt_ids(tokenizer: Any, text: str, add_bos: bool) -> List[int]:
    ids = _encode(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _response_ids(tokenizer: Any, text: str, add_eos: bool) -> List[int]:
    ids = _encode(tokenizer, text)
    eos = getattr(tokenizer, "eos_token_id", None)
    if ids and add_eos and eos is not None and ids[-1] != eos:
        ids = ids + [eos]
    return ids


def _cut_prompt(ids: List[int], keep: int, mode: str, bos: Optional[int]) -> List[int]:
    if len(ids) <= keep:
        return ids
    if mode == "keep_start":
        return ids[:keep]
    if bos is not None and ids and ids[0] == bos and keep >= 1:
        return [bos] + (ids[len(ids) - keep + 1:] if keep > 1 else [])
    return ids[len(ids) - keep:] if keep > 0 else []


def truncate(
    prompt: List[int], responses: List[List[int]], *, max_length: int, max_prompt_length: Optional[int],
    truncation_mode: str, bos: Optional[int] = None,
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
        raise ConfigError(f"max_prompt_length must be in [0, max_length), got {max_prompt_length} (max_length={max_length})")


def _skip(skips: Optional[SkipCounter], reason: str) -> None:
    if skips is not None:
        skips.add(reason)


def _tokenize(tokenizer, prompt, responses, *, max_length, max_prompt_length, truncation_mode, add_bos, add_eos, skips):
    _check_lengths(max_length, max_prompt_length)
    prompt_text, texts, fallback = render_texts(tokenizer, prompt, responses)
    prompt_ids = _prompt_ids(tokenizer, prompt_text, add_bos)
    resp_ids = [_response_ids(tokenizer, t, add_eos) for t in texts]
    if any(not r for r in resp_ids):
        return _skip(skips, SKIP_EMPTY_TOKENS)
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    prompt_ids, resp_ids = truncate(
        prompt_ids, resp_ids, max_length=max_length, max_prompt_length=max_prompt_length, truncation_mode=truncation_mode, bos=bos
    )
    if any(not r for r in resp_ids):
        return _skip(skips, SKIP_EMPTY_TRUNCATED)
    return prompt_ids, resp_ids, fallback


def tokenize_preference(
    row: PreferenceRow, tokenizer: Any, *, max_length: int = 512, max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end", add_bos: bool = True, add_eos: bool = True, skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedPair]:
    """Tokenise one pair; ``None`` (reason counted in ``skips``) if a response ends up empty."""
    out = _tokenize(
        tokenizer, row.prompt, [row.chosen, row.rejected], max_length=max_length, max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode, add_bos=add_bos, add_eos=add_eos, skips=skips,
    )
    if out is None:
        return None
    prompt_ids, (chosen_ids, rejected_ids), fallback = out
    meta = dict(row.meta, template_fallback=True) if fallback else dict(row.meta)
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, extras=dict(row.extras), meta=meta)


def tokenize_sft(
    row: SFTRow, tokenizer: Any, *, max_length: int = 512, max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end", add_bos: bool = True, add_eos: bool = True, skips: Optional[SkipCounter] = None,
) -> Optional[TokenizedSFT]:
    """Tokenise one SFT row (loss on the completion); ``None`` if the completion ends up empty."""
    out = _tokenize(
        tokenizer, row.prompt, [row.completion], max_length=max_length, max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode, add_bos=add_bos, add_eos=add_eos, skips=skips,
    )
    if out is None:
        return None
    prompt_ids, (completion_ids,), fallback = out
    meta = dict(row.meta, template_fallback=True) if fallback else dict(row.meta)
    return TokenizedSFT(prompt_ids, completion_ids, meta=meta)
