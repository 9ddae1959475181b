"""A user's scorer ``module:function`` (``function(prompt, response) -> float``): loading it and calling it safely.

``dpolab compare --oracle`` and the online objective's ``module:function`` judge share these; ``option`` names the
setting in the one-line errors (``--oracle`` or ``online.judge``)."""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable, Optional

from ..errors import UserError


class OracleError(UserError):
    """A user's oracle cannot be loaded, raises, or returns something other than a finite number."""


def load_oracle(spec: str, search_dir: Optional[str] = None, option: str = "--oracle") -> Callable[[str, str], float]:
    """``module:function`` -> the callable (``search_dir``, default the current folder, is tried for the module too)."""
    if ":" not in spec:
        raise OracleError(f"{option} must look like module:function, got '{spec}'")
    module, _, name = spec.partition(":")
    folder = search_dir or os.getcwd()
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise OracleError(f"{option} {spec}: cannot import module '{module}' ({e})") from e
    except AttributeError:
        raise OracleError(f"{option} {spec}: module '{module}' has no '{name}'") from None
    if not callable(fn):
        raise OracleError(f"{option} {spec}: '{name}' is not callable")
    return fn


def call_oracle(
    fn: Callable[[str, str], float], spec: str, prompt: str, response: str, option: str = "--oracle"
) -> float:
    """One oracle score, or an :class:`OracleError` naming the oracle when it raises or is not a finite number."""
    try:
        value = fn(prompt, response)
    except Exception as e:
        raise OracleError(
            f"{option} {spec} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            f" (on prompt {prompt[:40]!r})"
        ) from e
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise OracleError(f"{option} {spec} returned {value!r}, not a number (on prompt {prompt[:40]!r})") from None
    if not math.isfinite(out):
        raise OracleError(f"{option} {spec} returned {out}, not a finite number (on prompt {prompt[:40]!r})")
    return out
