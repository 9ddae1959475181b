"""Run-wide settings of the loop: the mixed-precision context (and the ``train.bf16=auto`` choice); its progress bars
are :mod:`dpolab.progress`'s."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from ..progress import bar_interval, progress_bar  # noqa: F401  (the loop's bars look like every other)
from .errors import TrainError

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


def resolve_bf16(setting: Union[bool, str], device: torch.device, *, flags: Optional[set] = None) -> Tuple[bool, str]:
    """``train.bf16`` (true, false or 'auto') on ``device`` -> (use bf16 autocast, why). ``auto`` picks bf16 where
    the hardware computes it fast: a CUDA device with bf16 support, or a CPU with one of ``FAST_BF16_CPU_FLAGS``
    (``flags``: the CPU's flags, read from /proc/cpuinfo when None); fp32 otherwise."""
    if setting is True or setting is False:
        return setting, f"train.bf16={'true' if setting else 'false'}"
    if setting != "auto":
        raise TrainError(f"train.bf16: {setting!r} is not valid; choose true, false or auto")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"train.bf16=auto: CUDA device '{torch.cuda.get_device_name(device)}' supports bf16"
        return False, f"train.bf16=auto: CUDA device '{torch.cuda.get_device_name(device)}' has no bf16 support -> fp32"
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        if flags is None:
            cap = torch.backends.cpu.get_cpu_capability()
            return False, (
                f"train.bf16=auto: no /proc/cpuinfo to read the CPU's flags from (torch reports {cap}) -> "
                f"fp32; set train.bf16=true if this CPU has AMX or AVX-512 BF16"
            )
        found = [f for f in FAST_BF16_CPU_FLAGS if f in flags]
        if found:
            return True, f"train.bf16=auto: the CPU has {' and '.join(found)} (fast bf16 matrix products)"
        return False, (
            f"train.bf16=auto: the CPU has neither {' nor '.join(FAST_BF16_CPU_FLAGS)} (bf16 would be slower "
            f"than fp32 here) -> fp32"
        )
    return False, f"train.bf16=auto: no bf16 speed rule for device type '{device.type}' -> fp32"


def autocast_factory(bf16: bool, device: torch.device):
    """A zero-argument context factory: bf16 autocast on the run's device, or nothing. (Our own, not Accelerator's,
    whose process-wide state would pin the first run's choice for every later run in one process, e.g. a study.)"""
    if not bf16:
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("train.bf16=true but this GPU has no bf16 support; set train.bf16=false")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
