"""Validate raw records and normalise them to :class:`PreferenceRow` / :class:`SFTRow`.

Accepted preference records (field names can be remapped with ``columns``, e.g.
``{"prompt": "question", "chosen": "good"}``):

- ``prompt`` / ``chosen`` / ``rejected`` as strings;
- the same as chat messages (lists of ``{"role", "content"}`` with role in system/user/assistant/tool);
  if any of the three is a message list, text fields are lifted to messages (a text prompt becomes one
  user message, a text response one assistant message);
- only ``chosen`` / ``rejected`` (Anthropic-HH style): the prompt is their common beginning. For text it
  ends right after the last ``"\\n\\nAssistant:"`` of the common prefix if there is one, else just before
  the last whitespace run of the common prefix (so a word is never split and BPE keeps the leading space
  on the response); for messages it is the common leading messages.

With ``data_format="hh"`` (``data.format=hh``), Anthropic-HH text (``"\n\nHuman: ... \n\nAssistant: ..."``) is
parsed into chat messages (Human -> user, Assistant -> assistant; each turn's text stripped of surrounding
whitespace): the prompt is the conversation before the final Assistant turn, which must be the same in chosen and
rejected, and each response is that final Assistant turn, so the tokenizer's chat template renders them. Where
earlier turns differ (as in some rows of Anthropic's own HH-RLHF files), the implicit-prompt rule applies: the shared
leading turns up to the last shared Human turn are the prompt and each response is the rest of its conversation; such
rows are counted in ``skips.notes`` and said in the load's log line. Text that does not parse (no turn marker, text
before the first turn, a last turn that is not the Assistant's, conversations that differ from the first Human turn)
is a :class:`DataError` naming source, row and field. With an explicit ``prompt`` column the prompt
is parsed the same way (a trailing empty ``Assistant:`` turn dropped) and chosen / rejected are the Assistant's
replies. A tokenizer without a chat template (``chat=False``) keeps the text as it is (after the same checks).

Accepted SFT records: ``prompt`` / ``completion``; ``text`` (prompt ''); chat ``messages`` (the last
message must be the assistant's: it is the completion, everything before it is the prompt).

Accepted unpaired records (KTO, TRL's unpaired format): any SFT record plus a boolean ``label`` (true: a desirable
completion, false: an undesirable one); in CSV/TSV files, which have no types, the text ``true`` / ``false``.

``extras`` names numeric columns copied to ``PreferenceRow.extras`` as floats (e.g. ``rm_margin``).
Remaining scalar columns go to ``meta`` untouched, with the source row number under ``"row"``.

A malformed record raises :class:`DataError` naming source, row and field. Rows skipped by design
(identical chosen and rejected, an empty response) are not errors: the functions return ``None`` and
count the reason in ``skips``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from dpolab.data.types import DataError, Messages, PreferenceRow, SFTRow, SkipCounter, Text, UnpairedRow
from dpolab.errors import ConfigError

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("auto", "hh")  # data.format
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_EXPECTED = "data.format=hh expects '\\n\\nHuman: ...\\n\\nAssistant: ...' text"
SKIP_IDENTICAL = "identical chosen and rejected"
SKIP_EMPTY = "empty response"
HH_EARLIER_TURNS = (
    "rows kept whose earlier turns differ between chosen and rejected (data.format=hh: the shared "
    "turns are the prompt, each response the rest of its conversation)"
)


class _Ctx:
    """Where a record came from, so every error names source, row and field."""

    def __init__(self, source: Optional[str], row: Optional[int], columns: Optional[Mapping[str, str]]):
        self.source, self.row, self.columns = source, row, dict(columns or {})

    def col(self, name: str) -> str:
        return self.columns.get(name, name)

    def error(self, name: str, message: str) -> DataError:
        return DataError(message, source=self.source, row=self.row, field=self.col(name))


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _valid_unicode(text: str, name: str, ctx: _Ctx, where: str = "") -> str:
    """Reject lone surrogates (e.g. JSON "\\ud800"): they are not text and no tokenizer can encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ctx.error(
            name, f"{where}invalid Unicode: lone surrogate {text[e.start]!r} at character {e.start + 1}"
        ) from None
    return text


def _messages(value: list, name: str, ctx: _Ctx) -> Messages:
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ctx.error(name, f"message {i}: expected a dict with 'role' and 'content', got {_type_name(m)}")
        if not isinstance(m["role"], str) or m["role"] not in ROLES:
            raise ctx.error(name, f"message {i}: unknown role {m['role']!r:.60} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ctx.error(name, f"message {i}: content must be text, got {_type_name(m['content'])}")
        _valid_unicode(m["content"], name, ctx, f"message {i}: ")
        out.append(dict(m))
    return out


def _text(record: Mapping, name: str, ctx: _Ctx) -> Text:
    """The field as a string or validated chat messages."""
    col = ctx.col(name)
    if col not in record:
        raise ctx.error(
            name,
            f"missing (columns present: {', '.join(map(str, record)) or 'none'}; map yours with "
            f"data.columns, e.g. data.columns={{{name}: your_column}})",
        )
    value = record[col]
    if isinstance(value, str):
        return _valid_unicode(value, name, ctx)
    if isinstance(value, list):
        return _messages(value, name, ctx)
    raise ctx.error(name, f"expected text or chat messages, got {_type_name(value)}")


def _is_empty(value: Text) -> bool:
    return value == "" or (isinstance(value, list) and all(m["content"] == "" for m in value))


def _as_messages(value: Text, role: str) -> Messages:
    if isinstance(value, list):
        return value
    return [{"role": role, "content": value}] if value else []


def split_common_prefix(chosen: Text, rejected: Text) -> Tuple[Text, Text, Text]:
    """Split an implicit prompt off two responses: ``(prompt, chosen_rest, rejected_rest)``."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, list) or isinstance(rejected, list):
        return "", chosen, rejected
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    cut = common.rfind(HH_ASSISTANT)
    if cut >= 0:
        cut += len(HH_ASSISTANT)
    else:
        cut = n
        while cut > 0 and not common[cut - 1].isspace():  # back to the end of the last whitespace run
            cut -= 1
        while cut > 0 and common[cut - 1].isspace():  # ... and to its start: the space goes to the response
            cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_hh(text: str, name: str = "text", ctx: Optional[_Ctx] = None) -> Messages:
    """Anthropic-HH text as chat messages: ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` ->
    ``[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]`` (the blank lines before the
    first turn may be missing). Raises :class:`DataError` (naming ``ctx``'s source and row, and ``name``) if it does
    not parse."""
    ctx = ctx or _Ctx(None, None, None)
    body = text.lstrip(" \t\r\n")
    parts = _HH_TURN.split("\n\n" + body if body.startswith(tuple(f"{r}:" for r in _HH_ROLES)) else text)
    if len(parts) == 1:
        raise ctx.error(name, f"no '\\n\\nHuman:' or '\\n\\nAssistant:' turn in {text[:40]!r} ({_HH_EXPECTED})")
    if parts[0].strip():
        raise ctx.error(name, f"text before the first turn: {parts[0][:40]!r} ({_HH_EXPECTED})")
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _hh_text(record: Mapping, name: str, ctx: _Ctx) -> str:
    value = _text(record, name, ctx)
    if not isinstance(value, str):
        raise ctx.error(name, f"{_HH_EXPECTED}, got chat messages (drop data.format=hh for message rows)")
    return value


def _hh_pair(
    record: Mapping, ctx: _Ctx, explicit_prompt: bool, chat: bool, skips: Optional[SkipCounter] = None
) -> Tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) of an HH record: chat messages, or (``chat`` False) the checked text as it is.
    Earlier turns that differ: the shared leading turns up to a Human turn are the prompt (counted in ``skips``)."""
    chosen, rejected = _hh_text(record, "chosen", ctx), _hh_text(record, "rejected", ctx)
    if explicit_prompt:
        prompt_text = _hh_text(record, "prompt", ctx)
        prompt = parse_hh(prompt_text, "prompt", ctx)
        if prompt[-1]["role"] == "assistant" and not prompt[-1]["content"]:
            prompt = prompt[:-1]  # the prompt ends with the "\n\nAssistant:" the responses follow
        if not chat:
            return prompt_text, chosen, rejected
        return (
            prompt,
            [{"role": "assistant", "content": chosen.strip()}],
            [{"role": "assistant", "content": rejected.strip()}],
        )
    convs = {}
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        msgs = parse_hh(text, name, ctx)
        if msgs[-1]["role"] != "assistant":
            raise ctx.error(
                name, f"the last turn must be the Assistant's (the response), got a Human turn ({_HH_EXPECTED})"
            )
        convs[name] = msgs
    (c_prompt, c_resp), (r_prompt, r_resp) = [(m[:-1], m[-1:]) for m in (convs["chosen"], convs["rejected"])]
    if c_prompt != r_prompt:  # as Anthropic's HH-RLHF has: the shared turns are the prompt (the implicit-prompt rule)
        c, r = convs["chosen"], convs["rejected"]
        turn = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
        shared = turn  # back to a point where both go on with an Assistant turn (the prompt ends with a Human turn)
        while shared > 0 and not (
            shared < min(len(c), len(r)) and c[shared]["role"] == r[shared]["role"] == "assistant"
        ):
            shared -= 1
        if shared == 0:
            raise ctx.error(
                "rejected",
                f"the conversation differs from chosen's at turn {turn + 1}, before any shared "
                f"Human turn (data.format=hh needs a shared prompt)",
            )
        if skips is not None:
            skips.note(HH_EARLIER_TURNS)
        if not chat:
            return split_common_prefix(chosen, rejected)  # after the last shared "\n\nAssistant:", as data.format=auto
        return c[:shared], c[shared:], r[shared:]
    if not chat:
        return split_common_prefix(chosen, rejected)
    return c_prompt, c_resp, r_resp


def _number(record: Mapping, name: str, ctx: _Ctx) -> float:
    col = ctx.col(name)
    if col not in record:
        raise ctx.error(name, "missing (requested as an extra)")
    value = record[col]
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        out = float(value)
    except (ValueError, OverflowError):
        raise ctx.error(name, f"expected a number, got {_type_name(value)} {value!r:.40}") from None
    if not math.isfinite(out):
        raise ctx.error(name, f"expected a finite number, got {value!r}")
    if abs(out) > _FLOAT32_MAX:  # finite here, but infinite once the engine holds it as float32
        raise ctx.error(name, f"expected a number within float32 range (|x| <= {_FLOAT32_MAX:.4g}), got {value!r}")
    return out


_FLOAT32_MAX = 3.4028234663852886e38


def _meta(record: Mapping, used: Iterable[str], row: Optional[int]) -> Dict[str, Any]:
    used = set(used)
    meta = {k: v for k, v in record.items() if k not in used and (v is None or isinstance(v, (str, int, float, bool)))}
    meta.setdefault("row", row)
    return meta


def _skip(skips: Optional[SkipCounter], reason: str) -> None:
    if skips is not None:
        skips.add(reason)


def to_preference_row(
    record: Mapping,
    *,
    source: Optional[str] = None,
    row: Optional[int] = None,
    columns: Optional[Mapping[str, str]] = None,
    extras: Iterable[str] = (),
    skips: Optional[SkipCounter] = None,
    data_format: str = "auto",
    chat: bool = True,
) -> Optional[PreferenceRow]:
    """Validate one preference record; ``None`` (reason counted in ``skips``) if skipped by design. ``data_format``
    "hh": parse Anthropic-HH text into chat messages (kept as text when ``chat`` is False: no chat template)."""
    ctx = _Ctx(source, row, columns)
    if not isinstance(record, Mapping):
        raise DataError(f"expected a record (dict), got {_type_name(record)}", source=source, row=row)
    explicit_prompt = "prompt" in ctx.columns or "prompt" in record
    if data_format not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {data_format!r}")
    if data_format == "hh":
        prompt, chosen, rejected = _hh_pair(record, ctx, explicit_prompt, chat, skips)
    else:
        chosen, rejected = _text(record, "chosen", ctx), _text(record, "rejected", ctx)
        if explicit_prompt:
            prompt = _text(record, "prompt", ctx)
        else:
            prompt, chosen, rejected = split_common_prefix(chosen, rejected)
    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        prompt = _as_messages(prompt, "user")
        chosen, rejected = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
    if chosen == rejected:
        return _skip(skips, SKIP_IDENTICAL)
    if _is_empty(chosen) or _is_empty(rejected):
        return _skip(skips, SKIP_EMPTY)
    extra_values = {name: _number(record, name, ctx) for name in extras}
    used = [ctx.col(n) for n in ("prompt", "chosen", "rejected", *extras)]
    return PreferenceRow(prompt, chosen, rejected, extras=extra_values, meta=_meta(record, used, row))


def _split_messages(messages: Messages, ctx: _Ctx) -> Tuple[Messages, Messages]:
    if not messages:
        raise ctx.error("messages", "no messages")
    if messages[-1]["role"] != "assistant":
        raise ctx.error(
            "messages", f"the last message must be the assistant's (the completion), got role {messages[-1]['role']!r}"
        )
    return messages[:-1], messages[-1:]


def to_sft_row(
    record: Mapping,
    *,
    source: Optional[str] = None,
    row: Optional[int] = None,
    columns: Optional[Mapping[str, str]] = None,
    skips: Optional[SkipCounter] = None,
) -> Optional[SFTRow]:
    """Validate one SFT record (prompt/completion, text, or messages); ``None`` if skipped by design."""
    ctx = _Ctx(source, row, columns)
    if not isinstance(record, Mapping):
        raise DataError(f"expected a record (dict), got {_type_name(record)}", source=source, row=row)
    has = lambda name: name in ctx.columns or name in record  # noqa: E731
    if has("completion"):
        prompt: Text = _text(record, "prompt", ctx) if has("prompt") else ""
        completion = _text(record, "completion", ctx)
        used = ("prompt", "completion")
    elif has("messages"):
        msgs = _text(record, "messages", ctx)
        if not isinstance(msgs, list):
            raise ctx.error("messages", "expected chat messages (a list), got str")
        prompt, completion = _split_messages(msgs, ctx)
        used = ("messages",)
    elif has("text"):
        prompt, completion = "", _text(record, "text", ctx)
        used = ("text",)
    else:
        raise DataError(
            "no SFT fields: expected 'prompt'+'completion', 'text' or 'messages' "
            f"(columns present: {', '.join(map(str, record))})",
            source=source,
            row=row,
            field=ctx.col("completion"),
        )
    if isinstance(prompt, list) or isinstance(completion, list):
        prompt, completion = _as_messages(prompt, "user"), _as_messages(completion, "assistant")
    if _is_empty(completion):
        return _skip(skips, SKIP_EMPTY)
    return SFTRow(prompt, completion, meta=_meta(record, [ctx.col(n) for n in used], row))


def _label(record: Mapping, ctx: _Ctx) -> bool:
    """The boolean ``label`` of an unpaired row (a CSV/TSV cell holds the text true or false)."""
    col = ctx.col("label")
    if col not in record:
        raise ctx.error(
            "label",
            f"missing: an unpaired row needs a boolean label (true: desirable, false: undesirable) "
            f"(columns present: {', '.join(map(str, record)) or 'none'})",
        )
    value = record[col]
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python or NumPy boolean
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ctx.error("label", f"expected true or false, got {_type_name(value)} {value!r:.40}")


def to_unpaired_row(
    record: Mapping,
    *,
    source: Optional[str] = None,
    row: Optional[int] = None,
    columns: Optional[Mapping[str, str]] = None,
    skips: Optional[SkipCounter] = None,
) -> Optional[UnpairedRow]:
    """Validate one unpaired record (an SFT record plus a boolean ``label``); ``None`` if skipped by design."""
    ctx = _Ctx(source, row, columns)
    if not isinstance(record, Mapping):
        raise DataError(f"expected a record (dict), got {_type_name(record)}", source=source, row=row)
    has = lambda name: name in ctx.columns or name in record  # noqa: E731
    if has("chosen") and has("rejected") and not (has("completion") or has("messages") or has("text")):
        raise ctx.error(
            "completion",
            "missing: this looks like preference pairs (chosen/rejected); set "
            "data.unpaired_from_pairs=true to split each pair into two unpaired rows",
        )
    label = _label(record, ctx)
    sft = to_sft_row(record, source=source, row=row, columns=columns, skips=skips)
    if sft is None:
        return None
    meta = {k: v for k, v in sft.meta.items() if k != ctx.col("label")}
    return UnpairedRow(sft.prompt, sft.completion, label, meta=meta)
