"""The run folder: one writer at a time, never clobber an earlier run unasked, writable with room, cleared on
request."""

from __future__ import annotations

import json
import os
import shutil
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .. import atomic
from ..models.quiet import known_warnings_silenced
from .errors import TrainError

DONE_MARKER = "DONE"
LOCK_FILE = ".lock"
# what a run writes; any of them means the folder holds an earlier run (finished or not)
RESUME_CHANGES = "resume_changes.jsonl"  # the settings changed on each resume (dpolab.engine.resume_guard)
RUN_FILES = (
    "checkpoints",
    "final",
    DONE_MARKER,
    "metrics.jsonl",
    "summary.json",
    "config.yaml",
    "probes.pt",
    "ref_cache",
    RESUME_CHANGES,
)


def check_output_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a folder that holds an earlier run unless the caller resumes it or overwrites it; with ``overwrite`` and
    no resume, clear the run's own files (checkpoints, final model, metrics, probes, its own ``ref_cache/``)."""
    if not (overwrite or resume):
        earlier = [name for name in RUN_FILES if (run_dir / name).exists()]
        if (run_dir / DONE_MARKER).exists():
            raise TrainError(
                f"{run_dir} already holds a finished run; set output.overwrite=true to replace it or "
                f"choose another output.dir"
            )
        if earlier:
            raise TrainError(
                f"{run_dir} holds an unfinished run ({', '.join(earlier)}); continue it with --resume, "
                f"or set output.overwrite=true to replace it, or choose another output.dir"
            )
    if overwrite and not resume:
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def make_writable(run_dir: Path) -> List[Path]:
    """Create ``run_dir`` and check that files can be written in it (a clear error, not a failure hours later).
    Returns the folders this call created, deepest first (for :func:`remove_unused`)."""
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output folder {run_dir} is not writable: {e.strerror or e}") from e
    return created


def claim_run_folder(run_dir: Path, owner: Any = None) -> "RunLock":
    """Create ``run_dir`` (checked writable) and lock it, until released or ``owner`` is garbage-collected; the lock
    remembers what this created, for :meth:`RunLock.remove_unused`."""
    created = make_writable(run_dir)
    lock = RunLock(run_dir).acquire()
    lock.created_dirs = created
    if owner is not None:
        weakref.finalize(owner, lock.release)
    return lock


_HELD: Dict[str, "RunLock"] = {}  # locks this process holds, by folder


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``<run>/.lock``, which names the holder's pid).

    The kernel releases it when the holder exits in any way, so a lock left by a dead process is never in the way.
    Within one process, a new lock on a folder takes over from an earlier one (an abandoned trainer object)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: Optional[int] = None
        self.created = False  # whether acquire() created the lock file (else an earlier run's is reused)
        self.created_dirs: List[Path] = []  # the folders claim_run_folder created, deepest first

    def acquire(self) -> "RunLock":
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key].release()
        try:  # O_EXCL: created here, or there before (an earlier run's, or a holder's)
            fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainError(
                f"{self.path.parent} is in use by another dpolab process (pid {holder}); wait for it to "
                f"finish or stop it, or choose another output.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self.created = fd, created
        _HELD[key] = self
        return self

    def remove_unused(self) -> None:
        """Undo the claim of a run refused before it started: release, remove the lock file if this lock created it,
        then each folder this claim created (deepest first) that is now empty. A folder that existed before, or holds
        anything else, is left alone (``rmdir`` only removes empty folders)."""
        self.release()
        if self.created:
            self.path.unlink(missing_ok=True)
        for d in self.created_dirs:
            try:
                d.rmdir()
            except OSError:  # not empty (or already gone): keep it and every folder above it
                return

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        _HELD.pop(str(self.path.resolve()), None)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


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
        raise TrainError(
            f"output folder {run_dir} has {free / 2**20:.0f} MB free but this run needs about "
            f"{need / 2**20:.0f} MB ({keep_last} kept checkpoint(s) of ~{ckpt_bytes / 2**20:.0f} MB, one being "
            f"written, the final model); free some space, lower output.keep_last, or choose another output.dir"
        )


def publish(run_dir: Path, summary: Dict[str, Any], save_final: Optional[Callable[[Path], None]]) -> None:
    """Finish a run: the final model (``save_final(folder)``, if given) into ``final/``, then ``summary.json``, then
    the ``DONE`` marker, each written atomically and in that order, so ``DONE`` means everything is there."""
    if save_final is not None:
        with atomic.atomic_dir(run_dir / "final") as tmp, known_warnings_silenced():  # (dpolab/models/quiet.py)
            save_final(tmp)
    atomic.write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    atomic.write_text(run_dir / DONE_MARKER, "ok\n")
