"""Third-party log records that say nothing a dpolab user can act on, dropped narrowly (by logger and message); every
other record is left alone. The warnings counterpart (``warnings.warn``) is :mod:`dpolab.engine.quiet`.

- bitsandbytes (installed with the ``test`` extra for QLoRA, and imported by peft whenever it is installed), at
  import on a CPU with AVX512-BF16: "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
  'kernels'...". It concerns an optional kernel for 4-bit matrix products on the CPU, which bitsandbytes replaces with
  its own code; it was printed once per process for every LoRA run, quantised or not.
"""
from __future__ import annotations

import logging
import re

KNOWN = (
    ("bitsandbytes.backends.cpu.ops", re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community")),
)


class _DropKnown(logging.Filter):
    def __init__(self, pattern: "re.Pattern[str]"):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_known_log_records() -> None:
    """Install the filters of :data:`KNOWN` on their loggers (idempotent; a logger may be created before its module)."""
    for name, pattern in KNOWN:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))
