"""The run folder: refuse to clobber a finished run, check it is writable and has room, clear it on request."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import TrainError

DONE_MARKER = "DONE"
RUN_FILES = ("checkpoints", "final", DONE_MARKER, "metrics.jsonl", "summary.json", "probes.pt", "ref_cache")


def check_output_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Create ``run_dir`` (writable, or a clear error); with ``overwrite`` and no resume, clear the run's own files
    (checkpoints, final model, metrics, probes and its own reference cache ``ref_cache/``)."""
    if (run_dir / DONE_MARKER).exists() and not (overwrite or resume):
        raise TrainError(f"{run_dir} already holds a finished run; set output.overwrite=true or choose another output.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output folder {run_dir} is not writable: {e.strerror or e}") from e
    if overwrite and not resume:
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def checkpoint_bytes(model, lora: bool, optimizer: str) -> int:
    """About how much one checkpoint takes: the saved weights (all, or the LoRA adapter) and the optimiser state."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = trainable if lora else sum(p.numel() * p.element_size() for p in model.parameters())
    states = {"adamw": 2, "rmsprop": 1, "sgd": 1}.get(optimizer, 2)
    return weights + states * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def check_free_space(run_dir: Path, ckpt_bytes: int, keep_last: int) -> None:
    """Fail before training when the disk cannot hold the checkpoints (kept ones + the one being written) and the
    final model, rather than after hours of training."""
    need = ckpt_bytes * (max(1, keep_last) + 1) + ckpt_bytes + 16 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainError(f"output folder {run_dir} has {free / 2**20:.0f} MB free but this run needs about "
                         f"{need / 2**20:.0f} MB ({keep_last} kept checkpoint(s) of ~{ckpt_bytes / 2**20:.0f} MB, one being "
                         f"written, the final model); free some space, lower output.keep_last, or choose another output.dir")
