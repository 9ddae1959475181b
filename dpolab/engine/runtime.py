"""The run's compute settings, decided once at start, logged and recorded in ``summary.json`` (``runtime``):
bf16 autocast (``train.bf16``: true, false or auto), torch's thread counts (``train.threads``) and
``torch.compile`` of the model (``train.compile``)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch

from ..config import COMPILE_MODES, TrainConfig
from ..models.device import set_threads as apply_threads
from .errors import TrainError
from .precision import autocast_factory, resolve_bf16


@dataclass
class Runtime:
    """What this run computes with: ``autocast`` is the context factory every forward runs under."""

    bf16: bool
    bf16_reason: str
    threads: int
    interop_threads: int
    threads_source: str
    compile: Optional[str]  # the torch.compile mode in use, or None
    autocast: Callable = field(repr=False, default=None)

    def record(self) -> Dict[str, Any]:
        return {
            "bf16": self.bf16,
            "bf16_reason": self.bf16_reason,
            "threads": self.threads,
            "interop_threads": self.interop_threads,
            "threads_source": self.threads_source,
            "compile": self.compile,
        }


def set_threads(threads: Optional[int]) -> tuple:
    """Apply ``train.threads`` (None: leave torch's setting, which honours OMP_NUM_THREADS); returns
    (intra-op threads, inter-op threads, where the number came from, a note or None)."""
    return apply_threads(threads, name="train.threads")


def compile_mode(setting: Union[bool, str]) -> Optional[str]:
    """``train.compile`` -> the torch.compile mode (None: off)."""
    if setting is False or setting is None:
        return None
    mode = "default" if setting is True else setting
    if mode not in COMPILE_MODES:
        raise TrainError(
            f"train.compile: {setting!r} is not valid; choose false, true or one of {', '.join(COMPILE_MODES)}"
        )
    return mode


def check_compile_works(device: torch.device) -> None:
    """A clear error before any model is built where torch.compile cannot run (inductor needs a C++ compiler on CPU)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise TrainError(
            "train.compile: torch.compile is not supported on this Python/torch build; set train.compile=false"
        )
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "c++", "clang++")
    ):
        raise TrainError(
            "train.compile: torch.compile (inductor) needs a C++ compiler on CPU and none was found "
            "(g++, c++, clang++ or $CXX); install one or set train.compile=false"
        )


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Compile the Hugging Face model inside ``model`` (peft / DDP wrappers call it) in place, with inductor: its
    parameters, state dict and saved files stay those of the plain model; a deep copy (the live reference) is compiled
    too, on its own weights. Forward and backward compile at the first calls (a second input shape switches to a
    dynamic-shape graph)."""
    from ..models.unwrap import unwrap

    unwrap(model, peft=True).compile(mode=None if mode == "default" else mode, dynamic=None)
    return model


def configure_runtime(t: TrainConfig, device: torch.device, log: Callable[[str], None]) -> Runtime:
    """Decide and apply the run's compute settings; one log line says what was chosen and why."""
    intra, inter, source, note = set_threads(t.threads)
    bf16, why = resolve_bf16(t.bf16, device)
    mode = compile_mode(t.compile)
    if mode is not None:
        check_compile_works(device)
    rt = Runtime(
        bf16=bf16,
        bf16_reason=why,
        threads=intra,
        interop_threads=inter,
        threads_source=source,
        compile=mode,
        autocast=autocast_factory(bf16, device),
    )
    log(
        f"compute: {'bf16 autocast' if bf16 else 'fp32'} ({why}); torch threads {intra} intra-op, {inter} inter-op "
        f"({source})"
        + (f"; {note}" if note else "")
        + (f"; torch.compile mode={mode} (the first steps compile: minutes on a small CPU)" if mode else "")
    )
    return rt
