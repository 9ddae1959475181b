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
