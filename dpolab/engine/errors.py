"""Why training stopped, in words a user can act on."""
from __future__ import annotations

from ..errors import UserError


class TrainError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, unusable output folder, out of memory); the message says why."""


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error (host or accelerator)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return "out of memory" in text.lower() or "can't allocate" in text or "cannot allocate memory" in text.lower()


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:160]
