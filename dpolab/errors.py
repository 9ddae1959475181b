"""The project's own error type for mistakes a user can fix (bad config, bad data, unusable folder).

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits 2; any other exception is a bug or an
environment failure and keeps its traceback. Each layer subclasses it (``ConfigError``, ``DataError``,
``LossConfigError``, ``ModelLoadError``, ``TrainError``) so callers can still catch the narrow kind.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; its message says what and how."""


class MissingPackageError(UserError, ImportError):
    """An optional package a chosen option needs is not installed; the message names the ``pip install`` command."""


class ConfigError(UserError, ValueError):
    """A bad configuration: unknown key, wrong type or value out of range."""


# what an allocator's message says when memory ran out: CUDA / MPS / XPU ("... out of memory ..."), PyTorch's CPU
# allocator ("DefaultCPUAllocator: can't allocate memory: ..."), the operating system (ENOMEM, "Cannot allocate memory")
_OOM_WORDS = ("out of memory", "can't allocate", "cannot allocate memory")


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` means memory ran out, on the host or an accelerator: a :class:`MemoryError`, torch's
    ``OutOfMemoryError`` (recognised by its class name, so this module needs no torch) or an error whose message says
    so (:data:`_OOM_WORDS`, any case). The one rule: the trainer turns such an error into a one-line hint, and the fast
    path's probe re-raises it instead of falling back to the plain path."""
    if isinstance(e, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__):
        return True
    text = str(e).lower()
    return any(w in text for w in _OOM_WORDS)


def first_sentence(error: BaseException, limit: int = 400) -> str:
    """The first sentence of an exception's message for a one-line error: the first line, continued over the
    following lines while the sentence has not ended (a message wrapped mid-sentence), whitespace collapsed, cut at
    ``limit`` characters on a word boundary (marked ``...``). The exception's type name when it has no message."""
    lines = [ln.strip() for ln in str(error).strip().splitlines()]
    if not lines or not lines[0]:
        return type(error).__name__
    text = lines[0]
    for ln in lines[1:]:
        if not ln or text.endswith((".", "!", "?")):
            break
        text += " " + ln
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text
