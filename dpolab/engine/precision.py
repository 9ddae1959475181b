"""Run-wide settings of the loop: the mixed-precision context and progress bars."""
from __future__ import annotations

import sys
from contextlib import nullcontext

import torch

from .errors import TrainError


def autocast_factory(bf16: bool, device: torch.device):
    """A zero-argument context factory: bf16 autocast on the run's device, or nothing. (Our own, not Accelerator's,
    whose process-wide state would pin the first run's choice for every later run in one process, e.g. a study.)"""
    if not bf16:
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("train.bf16=true but this GPU has no bf16 support; set train.bf16=false")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def bar_interval() -> float:
    """Refresh often on a terminal; rarely when the output goes to a log file."""
    return 0.1 if sys.stderr.isatty() else 10.0


def progress_bar(it, *, enabled: bool, **kw):
    """A transient tqdm bar over ``it`` (nothing when disabled, e.g. in non-main processes)."""
    from tqdm.auto import tqdm

    return tqdm(it, disable=not enabled, leave=False, mininterval=bar_interval(), **kw)
