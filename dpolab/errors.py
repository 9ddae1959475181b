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
