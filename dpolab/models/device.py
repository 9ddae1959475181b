"""Where a command that only runs a model (``dpolab eval``, ``generate``, ``chat``, ``rm score``) runs it: the
``--device`` option, and bf16 autocast where the device computes it (as ``train.bf16=auto`` does on a GPU).

``auto`` is the first CUDA device when torch sees one (then Apple's ``mps``), else the CPU. Any other value is a torch
device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); one this machine does not have is a one-line error. On a CUDA device
with bf16 support the forwards run under bf16 autocast (weights stay float32; log-probs are taken in float32);
elsewhere in float32.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from ..errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``--device`` -> a torch device this machine has (``auto``: CUDA, then MPS, then the CPU)."""
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device: '{spec}' is not a device; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {spec}: torch sees no CUDA device here (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: torch sees {count} CUDA device(s), numbered 0 to {count - 1}")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device {spec}: this torch has no usable MPS device (use --device cpu or auto)")
    return device


def uses_bf16(device: torch.device) -> bool:
    """bf16 autocast for inference: on a CUDA device that supports bf16 (float32 elsewhere)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def inference_autocast(device: torch.device) -> Callable:
    """A zero-argument context factory: bf16 autocast on ``device`` where :func:`uses_bf16`, else nothing."""
    if not uses_bf16(device):
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100, bf16 autocast)`` / ``cpu (float32)``, for a command's log line."""
    name = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    return f"{device} ({name}{'bf16 autocast' if uses_bf16(device) else 'float32'})"
