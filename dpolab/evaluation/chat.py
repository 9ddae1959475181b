"""``dpolab generate`` / ``dpolab chat``: a sampled reply from a model, with its chat template.

The model is a preset name (``smollm2-135m``), a full model folder (a run's ``final/``, a hub id) or a LoRA adapter
folder written by ``dpolab train`` (merged into the base its ``dpolab_model.json`` names): the same loader as
``dpolab eval``. When the tokenizer has a chat template (and ``template`` is on) the conversation is rendered with it
(``add_generation_prompt=True``), exactly as training renders chat-message prompts; otherwise the text is the prompt
as is. Tokens come from :func:`dpolab.evaluation.generation.generate` (BOS first as in training, stop at EOS,
special tokens removed, seeded sampling; ``temperature=0`` is greedy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..config import ModelConfig
from ..errors import ConfigError
from ..models.device import resolve_device, uses_bf16
from ..models.load import load_saved_model, load_tokenizer
from .generation import generate

Message = Dict[str, str]


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    seed: int = 0
    template: bool = True  # render with the tokenizer's chat template when it has one
    system: Optional[str] = None  # a system message first (chat template only)

    def check(self) -> "SamplingOptions":
        if self.system is not None:
            check_text(self.system, "--system")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self


def check_text(text: str, what: str) -> str:
    """``text`` as given, or a one-line error when it holds bytes that are not UTF-8 (Python keeps such bytes of a
    command-line argument as lone surrogates, which the tokenizer cannot take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(
            f"{what} is not UTF-8 text (byte 0x{ord(text[e.start]) & 0xFF:02x} at character {e.start + 1})"
        ) from e
    return text


def read_text(stream, what: str = "stdin") -> str:
    """All of ``stream`` as UTF-8 text; a one-line error naming the line when its bytes are not UTF-8."""
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if isinstance(raw, str):  # a text stream without bytes under it (a test's StringIO)
        return check_text(raw, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x})") from e


def input_lines(stream, interactive: bool, what: str = "stdin") -> Iterator[str]:
    """The user's lines: ``input()`` at a terminal (with a "> " prompt), else the stream's bytes line by line, each
    checked to be UTF-8 (a one-line error naming the line; a text stream's read-ahead would name the wrong one)."""
    turn = 0
    while True:
        turn += 1
        try:
            if interactive or not hasattr(stream, "buffer"):
                line = input("> " if interactive else "")
            else:
                raw = stream.buffer.readline()
                if not raw:
                    return
                line = raw.decode("utf-8").rstrip("\r\n")
        except EOFError:
            return
        except UnicodeDecodeError as e:
            raise ConfigError(f"{what}: line {turn} is not UTF-8 text (byte 0x{e.object[e.start]:02x})") from e
        yield check_text(line, f"{what}: line {turn}")


def load_chat_model(
    model: str, *, tokenizer: Optional[str] = None, dtype: Optional[str] = None, device: str = "auto"
) -> Tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a preset name, a model folder / hub id, or a dpolab LoRA adapter folder,
    on ``device`` (:func:`dpolab.models.device.resolve_device`); ``dtype`` None: bf16 weights on a GPU that supports
    them, float32 elsewhere."""
    dev = resolve_device(device)
    tok = load_tokenizer(ModelConfig(name_or_path=model, tokenizer=tokenizer))
    m = load_saved_model(model, tok, dtype=dtype or ("bfloat16" if uses_bf16(dev) else "float32"))
    m.to(dev).eval()
    return m, tok


def uses_template(tokenizer, opts: SamplingOptions) -> bool:
    return bool(opts.template and getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: List[Message], opts: SamplingOptions) -> str:
    """The prompt text the model continues: the conversation through the chat template (with the generation
    prompt), or, without one, the last user message as is."""
    if uses_template(tokenizer, opts):
        msgs = ([{"role": "system", "content": opts.system}] if opts.system else []) + list(messages)
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return messages[-1]["content"]


def reply(model, tokenizer, messages: List[Message], opts: SamplingOptions) -> str:
    """The model's next assistant message for the conversation ``messages`` (ending with the user's)."""
    opts.check()
    sample = opts.temperature > 0
    text = render_prompt(tokenizer, messages, opts)
    out = generate(
        model,
        tokenizer,
        [text],
        max_new_tokens=opts.max_new_tokens,
        batch_size=1,
        do_sample=sample,
        temperature=opts.temperature if sample else 1.0,
        top_p=opts.top_p,
        seed=opts.seed,
    )
    return out[0].strip()


class Conversation:
    """A chat: each :meth:`say` adds the user's line and the model's reply. With a chat template the whole history is
    the prompt; without one each line is a prompt of its own (a plain model has no notion of turns)."""

    def __init__(self, model, tokenizer, opts: SamplingOptions):
        self.model, self.tokenizer, self.opts = model, tokenizer, opts.check()
        self.messages: List[Message] = []
        self.turn = 0

    def say(self, text: str) -> str:
        history = self.messages if uses_template(self.tokenizer, self.opts) else []
        msgs = history + [{"role": "user", "content": text}]
        # a different seed per turn (turn 0 uses the given seed: `generate` with the same prompt and seed agrees)
        opts = SamplingOptions(**{**self.opts.__dict__, "seed": self.opts.seed + self.turn})
        answer = reply(self.model, self.tokenizer, msgs, opts)
        self.messages = msgs + [{"role": "assistant", "content": answer}]
        self.turn += 1
        return answer
