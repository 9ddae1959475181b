"""The one way to reach a model inside the wrappers training puts around it."""

from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module, *, peft: bool = False) -> torch.nn.Module:
    """The model inside its wrappers, outermost first: every wrapper that holds it as ``.module`` (torch's
    DistributedDataParallel, DeepSpeed's engine, Accelerate's wrappers of either) and ``torch.compile``'s
    ``OptimizedModule`` (``._orig_mod``), as often as they nest. With ``peft=True`` also peft's ``PeftModel``
    (``get_base_model()``: the Hugging Face model, its LoRA layers still inside); without it a ``PeftModel`` is kept,
    since its adapter switch (``disable_adapter``) and its state-dict keys are what reference code needs.
    Modules compiled in place (``module.compile()``, as ``train.compile`` does) have no wrapper to strip."""
    m = model
    while True:
        inner = getattr(m, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(m, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        m = inner
    if peft and hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m
