"""Atomic, resumable checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-NNNNNNN`` holding the model (HF format: full weights or
the LoRA adapter), the optimiser, the scheduler, the RNG states, the loss state (beta-DPO statistics) and
``state.json`` (step, metrics position). It is written into a temporary folder, its files' checksums are recorded
in ``checksums.json``, it is marked complete, flushed, and only then renamed into place
(:func:`dpolab.atomic.atomic_dir`), so a kill at any moment leaves the previous checkpoint intact. Resuming verifies
the checksums (:func:`latest_intact_checkpoint`) and falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..atomic import atomic_dir, torch_save_into
from ..models.quiet import known_warnings_silenced

COMPLETE = "COMPLETE"
CHECKSUMS = "checksums.json"
# temporary folders of writers killed mid-write: atomic_dir's ``.step-N.tmp-PID``, and ``.tmp-step-N-PID`` from
# dpolab versions before it (a run folder resumed with this version)
_DEBRIS = (".step-*.tmp-*", ".tmp-step-*")


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_checksums(folder: Path) -> Dict[str, str]:
    """SHA-256 of every file below ``folder`` (relative POSIX paths), except the checksum file and the marker."""
    return {
        f.relative_to(folder).as_posix(): file_sha256(f)
        for f in sorted(Path(folder).rglob("*"))
        if f.is_file() and f.name not in (CHECKSUMS, COMPLETE)
    }


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why ``ckpt`` cannot be trusted (a file missing, changed or unexpected), or None when every file matches the
    checksums recorded when it was written. A checkpoint from before checksums were recorded (no ``checksums.json``)
    has nothing to compare with: each of its files is read instead (:func:`unreadable_part`)."""
    needed = ["optimizer.pt", "scheduler.pt", "rng.pt", "loss_state.pt", "state.json"]
    listed = Path(ckpt) / CHECKSUMS
    if not listed.exists():
        missing = [n for n in needed if not (Path(ckpt) / n).is_file()]
        return f"{missing[0]} is missing" if missing else unreadable_part(Path(ckpt))
    try:
        recorded = json.loads(listed.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} is unreadable ({e})"
    for name in needed:
        if name not in recorded:
            return f"{CHECKSUMS} does not list {name}"
    for name, digest in recorded.items():
        f = Path(ckpt) / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != digest:
            return f"{name} does not match its checksum (changed or truncated since it was written)"
    return None


def unreadable_part(ckpt: Path) -> Optional[str]:
    """Which file of ``ckpt`` does not load (truncated, empty, not what it should be), or None when every one does:
    the training state as :func:`load_training_state` reads it, and every tensor of the weights."""
    from safetensors.torch import load_file

    weights = sorted((ckpt / "model").glob("*.safetensors"))
    if not weights:
        return "model/ has no .safetensors weights"
    for f in [*weights, *(ckpt / n for n in ("optimizer.pt", "scheduler.pt", "rng.pt", "loss_state.pt", "state.json"))]:
        try:
            if f.suffix == ".safetensors":
                load_file(str(f))
            elif f.suffix == ".pt":
                torch.load(f, weights_only=False)
            elif not isinstance(json.loads(f.read_text(encoding="utf-8")).get("step"), int):
                return f"{f.name} has no step"
        except Exception as e:  # noqa: BLE001 - any failure to load means this checkpoint cannot be resumed
            return f"{f.relative_to(ckpt)} cannot be read ({type(e).__name__})"
    return None


def latest_intact_checkpoint(run_dir: Path, log: Callable[[str], None] = print) -> Optional[Path]:
    """The newest checkpoint whose files match their checksums; each damaged newer one is named in a notice."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        log(f"checkpoint {ckpt} is damaged ({problem}); trying the one before it")
    return None


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    save_model,
    optimizer,
    scheduler,
    loss_state: Dict[str, Any],
    state: Dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically. ``save_model(path)`` writes the model/adapter in HF format."""
    final = checkpoint_dir(run_dir, step)
    # atomic_dir: files flushed, then renamed into place; an existing folder of the same step (a re-run) is replaced
    # only once the new one is complete; on an error (e.g. disk full) the partial folder is dropped (a kill leaves
    # it; the next save removes it). A failed write (disk full, file-size limit), whatever the writer's exception
    # type, is a WriteError (an OSError) naming the folder (dpolab.atomic.failed_write: by type and errno)
    with atomic_dir(final) as tmp:
        with known_warnings_silenced():  # peft's note on every adapter save (dpolab/models/quiet.py)
            save_model(tmp / "model")
        torch_save_into(optimizer.state_dict(), tmp / "optimizer.pt")
        torch_save_into(scheduler.state_dict(), tmp / "scheduler.pt")
        torch_save_into(rng_state(), tmp / "rng.pt")
        torch_save_into(loss_state, tmp / "loss_state.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
        (tmp / CHECKSUMS).write_text(json.dumps(folder_checksums(tmp), indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n")
    for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    for pattern in _DEBRIS:  # debris from killed writers
        for leftover in final.parent.glob(pattern):
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


def restore_training(ckpt: Optional[Path], optimizer, scheduler) -> Optional[Dict[str, Any]]:
    """Restore the optimiser's and scheduler's states from ``ckpt``; returns :func:`load_training_state`'s dict
    (None without a checkpoint: a run from the beginning)."""
    if ckpt is None:
        return None
    state = load_training_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state


def restore_weights(model, folder: Path) -> None:
    """Restore trainable weights saved by ``save_pretrained`` (full model or LoRA adapter) into ``model``."""
    from safetensors.torch import load_file

    from .errors import TrainError

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise TrainError(f"checkpoint {folder} has no .safetensors weights")
    state: Dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if (Path(folder) / "adapter_config.json").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n in missing if "lm_head" in n}  # tied to the input embeddings, not saved separately
        if set(missing) - tied or unexpected:
            raise TrainError(
                f"checkpoint {folder} does not match the model (missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
