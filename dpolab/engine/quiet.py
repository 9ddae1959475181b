"""Third-party warnings that say nothing a dpolab user can act on, silenced narrowly (by message, category and the
module that raises them) and only around the calls that raise them; every other warning is left alone.

- peft, at every adapter save (checkpoints, ``final/``), when the base model's folder holds no ``config.json`` (a
  GGUF folder, a tiny preset built from a config): "Could not find a config file in ... - will assume that the
  vocabulary was not modified". dpolab never resizes the embeddings, so the assumption holds.
- transformers' ``FutureWarning`` that ``is_gradient_checkpointing`` is deprecated, raised from inside transformers
  when peft wraps a model (LoRA set-up) and on saving; dpolab never calls it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

KNOWN = (
    (r"Could not find a config file in .* - will assume that the vocabulary was not modified", UserWarning,
     r"peft\.utils\.save_and_load"),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


@contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Run the block with :data:`KNOWN` ignored (the warning filters are restored afterwards)."""
    with warnings.catch_warnings():
        for message, category, module in KNOWN:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
