"""Atomic, resumable checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-NNNNNNN`` holding the model (HF format: full weights or
the LoRA adapter), the optimiser, the scheduler, the RNG states, the loss state (beta-DPO statistics) and
``state.json`` (step, metrics position). It is written into a temporary folder, flushed, marked complete,
and only then renamed into place, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

COMPLETE = "COMPLETE"


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            try:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            except OSError:
                pass


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Complete checkpoints, oldest first (incomplete temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir: Path, step: int, *, save_model, optimizer, scheduler, loss_state: Dict[str, Any],
                    state: Dict[str, Any], keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` atomically. ``save_model(path)`` writes the model/adapter in HF format."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        save_model(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(loss_state, tmp / "loss_state.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
    except Exception:  # e.g. disk full: drop the partial folder (a kill leaves it; the next save removes it)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # a re-run of the same step: replace it only once the new one is complete
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in final.parent.glob(".tmp-*"):  # debris from killed writers
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def load_training_state(ckpt: Path) -> Dict[str, Any]:
    """Everything but the model weights (the caller reloads those from ``ckpt / 'model'``)."""
    def load(name: str):
        return torch.load(ckpt / name, weights_only=False)

    return {
        "optimizer": load("optimizer.pt"),
        "scheduler": load("scheduler.pt"),
        "rng": load("rng.pt"),
        "loss_state": load("loss_state.pt"),
        "state": json.loads((ckpt / "state.json").read_text(encoding="utf-8")),
    }
