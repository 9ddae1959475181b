"""Third-party warnings and log records that say nothing a dpolab user can act on, silenced narrowly; everything else
is left alone.

Warnings (``warnings.warn``), by message, category and the module that raises them, and only around the calls that
raise them (:func:`known_warnings_silenced`):

- peft, at every adapter save (checkpoints, ``final/``), when the base model's folder holds no ``config.json`` (a
  GGUF folder, a tiny preset built from a config): "Could not find a config file in ... - will assume that the
  vocabulary was not modified". dpolab never resizes the embeddings, so the assumption holds.
- transformers' ``FutureWarning`` that ``is_gradient_checkpointing`` is deprecated, raised from inside transformers
  when peft wraps a model (LoRA set-up of a policy or a reward model), merges a saved adapter, and on saving; dpolab
  never calls it.

Log records (``logging``), by logger and message, dropped for the whole process (:func:`drop_known_log_records`, run
when :mod:`dpolab.models` is imported, before anything imports peft):

- bitsandbytes (installed with the ``test`` extra for QLoRA, and imported by peft whenever it is installed), at
  import on a CPU with AVX512-BF16: "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
  'kernels'...". It concerns an optional kernel for 4-bit matrix products on the CPU, which bitsandbytes replaces with
  its own code; it was printed once per process for every LoRA run, quantised or not.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

KNOWN = (
    (
        r"Could not find a config file in .* - will assume that the vocabulary was not modified",
        UserWarning,
        r"peft\.utils\.save_and_load",
    ),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


@contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Run the block with :data:`KNOWN` ignored (the warning filters are restored afterwards)."""
    with warnings.catch_warnings():
        for message, category, module in KNOWN:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


KNOWN_LOGS = (
    ("bitsandbytes.backends.cpu.ops", re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community")),
)


class _DropKnown(logging.Filter):
    def __init__(self, pattern: "re.Pattern[str]"):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_known_log_records() -> None:
    """Install the filters of :data:`KNOWN_LOGS` on their loggers (idempotent; a logger may be created before its
    module)."""
    for name, pattern in KNOWN_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))
