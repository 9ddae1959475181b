"""Run-wide settings of the loop: the mixed-precision context (and the ``train.bf16=auto`` choice); its progress bars
are :mod:`dpolab.progress`'s."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional, Tuple, Union

import torch

from ..errors import ConfigError
from ..models.device import FAST_BF16_CPU_FLAGS, cpu_flags  # noqa: F401  (re-exported: the one rule, in models/)
from ..models.device import resolve_bf16 as _resolve_bf16
from ..progress import bar_interval, progress_bar  # noqa: F401  (the loop's bars look like every other)
from .errors import TrainError


def resolve_bf16(setting: Union[bool, str], device: torch.device, *, flags: Optional[set] = None) -> Tuple[bool, str]:
    """``train.bf16`` (true, false or 'auto') on ``device`` -> (use bf16 autocast, why), by the rule ``dpolab eval``
    and ``rm score`` share (:func:`dpolab.models.device.resolve_bf16`; ``flags``: the CPU's flags, read from
    /proc/cpuinfo when None)."""
    try:
        return _resolve_bf16(setting, device, flags=flags, read_flags=lambda: cpu_flags(), name="train.bf16")
    except ConfigError as e:
        raise TrainError(str(e)) from e


def autocast_factory(bf16: bool, device: torch.device):
    """A zero-argument context factory: bf16 autocast on the run's device, or nothing. (Our own, not Accelerator's,
    whose process-wide state would pin the first run's choice for every later run in one process, e.g. a study.)"""
    if not bf16:
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("train.bf16=true but this GPU has no bf16 support; set train.bf16=false")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
