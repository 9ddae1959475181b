"""Where a command that only runs a model (``dpolab eval``, ``generate``, ``chat``, ``rm score``) runs it: the
``--device`` option, and bf16 autocast where the device computes it (as ``train.bf16=auto`` does on a GPU).

``auto`` is the first CUDA device when torch sees one (then Apple's ``mps``), else the CPU. Any other value is a torch
device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); one this machine does not have is a one-line error. Without a
``--bf16`` choice, on a CUDA device with bf16 support the forwards run under bf16 autocast (weights stay float32;
log-probs are taken in float32), elsewhere in float32; ``--bf16 true|false|auto`` decides as ``train.bf16`` does
(:func:`resolve_bf16`, also what ``train.bf16`` uses) and ``--threads`` as ``train.threads`` (:func:`set_threads`).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

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
    """bf16 autocast for inference without a ``--bf16`` choice: on a CUDA device that supports bf16 (float32
    elsewhere)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def inference_autocast(device: torch.device, bf16: Optional[bool] = None) -> Callable:
    """A zero-argument context factory: bf16 autocast on ``device`` where ``bf16`` (None: :func:`uses_bf16`), else
    nothing."""
    if not (uses_bf16(device) if bf16 is None else bf16):
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--bf16 true but this GPU has no bf16 support; use --bf16 false or auto")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe(device: torch.device, bf16: Optional[bool] = None) -> str:
    """``cuda:0 (NVIDIA H100, bf16 autocast)`` / ``cpu (float32)``, for a command's log line (``bf16`` None:
    :func:`uses_bf16`)."""
    name = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    on = uses_bf16(device) if bf16 is None else bf16
    return f"{device} ({name}{'bf16 autocast' if on else 'float32'})"


# -- bf16=auto and threads, shared with training (dpolab.engine.precision / runtime re-export them) ---------------
# CPU feature flags (/proc/cpuinfo) that give bf16 matrix products at least fp32's speed: AMX tiles (Intel Sapphire
# Rapids and later) and AVX-512 BF16 (Intel Cooper Lake and later, AMD Zen 4 and later). Without them bf16 autocast
# on a CPU converts to and from fp32 around each product and is slower than fp32.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> Optional[set]:
    """The CPU's feature flags (the first processor's ``flags`` line), or None where there is no such file."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return None


def resolve_bf16(
    setting: Union[bool, str],
    device: torch.device,
    *,
    flags: Optional[set] = None,
    read_flags: Callable[[], Optional[set]] = cpu_flags,
    name: str = "--bf16",
) -> Tuple[bool, str]:
    """``setting`` (true, false or 'auto'; the strings 'true' / 'false' too) on ``device`` -> (use bf16 autocast,
    why), the why worded with the option's ``name``. ``auto`` picks bf16 where the hardware computes it fast: a CUDA
    device with bf16 support, or a CPU with one of ``FAST_BF16_CPU_FLAGS`` (``flags``: the CPU's flags; None: from
    ``read_flags()``, /proc/cpuinfo); fp32 otherwise. Anything else is a :class:`ConfigError`."""
    setting = {"true": True, "false": False}.get(setting, setting) if isinstance(setting, str) else setting
    if setting is True or setting is False:
        return setting, f"{name}={'true' if setting else 'false'}"
    if setting != "auto":
        raise ConfigError(f"{name}: {setting!r} is not valid; choose true, false or auto")
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return True, f"{name}=auto: CUDA device '{gpu}' supports bf16"
        return False, f"{name}=auto: CUDA device '{gpu}' has no bf16 support -> fp32"
    if device.type == "cpu":
        flags = read_flags() if flags is None else flags
        if flags is None:
            cap = torch.backends.cpu.get_cpu_capability()
            return False, (
                f"{name}=auto: no /proc/cpuinfo to read the CPU's flags from (torch reports {cap}) -> "
                f"fp32; set {name}=true if this CPU has AMX or AVX-512 BF16"
            )
        found = [f for f in FAST_BF16_CPU_FLAGS if f in flags]
        if found:
            return True, f"{name}=auto: the CPU has {' and '.join(found)} (fast bf16 matrix products)"
        return False, (
            f"{name}=auto: the CPU has neither {' nor '.join(FAST_BF16_CPU_FLAGS)} (bf16 would be slower "
            f"than fp32 here) -> fp32"
        )
    return False, f"{name}=auto: no bf16 speed rule for device type '{device.type}' -> fp32"


def set_threads(threads: Optional[int], name: str = "--threads") -> tuple:
    """Apply a thread count (None: leave torch's setting, which honours OMP_NUM_THREADS); returns (intra-op
    threads, inter-op threads, where the number came from, a note or None)."""
    note = None
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS")
        source = f"OMP_NUM_THREADS={env}" if env else "torch default (the cores torch sees)"
    else:
        if threads < 1:
            raise ConfigError(f"{name} must be >= 1, got {threads}")
        source = f"{name}={threads}"
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != threads:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # torch allows it once per process, before any inter-op work (e.g. an earlier run)
                note = (
                    f"inter-op threads stay at {torch.get_num_interop_threads()} (torch sets them once per process, "
                    f"before parallel work starts)"
                )
    return torch.get_num_threads(), torch.get_num_interop_threads(), source, note
