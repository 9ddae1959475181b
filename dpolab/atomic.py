"""Write files and folders so that a crash or kill leaves either the old version or the new one, never half of it.

Every writer in the package goes through these helpers: the content is written to a temporary name in the same
folder (so the final rename stays on one file system), flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import UserError
from .interrupts import deferred_interrupts

PathLike = Union[str, "os.PathLike[str]"]

# errno values that mean "this write cannot succeed here": disk full or over quota, file-size limit (``ulimit -f``),
# read-only file system, no permission (or an immutable file), an I/O error, the folder gone or not a folder
WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
    }
)
# writers in Rust (safetensors) carry no OSError: their message ends with std::io::Error's "(os error N)", the errno
_RUST_IO_ERRNO = re.compile(r"\(os error (\d+)\)")


class WriteError(UserError, OSError):
    """A file or folder could not be written (disk full, file-size limit, read-only or immutable target): one line
    naming the path and the cause. An ``OSError`` too (``errno``, ``strerror``), so callers that catch write
    failures as ``OSError`` still do."""

    def __init__(self, path: PathLike, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.strerror}"


def failed_write(e: BaseException) -> Optional[OSError]:
    """The write failure behind ``e``, judged by exception type and errno (never by the message's words): ``e`` or
    an exception in its cause/context chain that is an ``OSError`` with an errno of :data:`WRITE_ERRNOS` (torch's
    zip writer raises ``RuntimeError('unexpected pos ...')`` with the ``OSError`` as its context), or, for Rust
    writers, the errno their message ends with. None when ``e`` is not a failed write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
        m = None if isinstance(e, OSError) else _RUST_IO_ERRNO.search(str(e))
        if m and int(m.group(1)) in WRITE_ERRNOS:
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def reported_as(path: PathLike) -> Iterator[None]:
    """Turn a failed write (:func:`failed_write`) inside the block into a one-line :class:`WriteError` naming
    ``path``; other exceptions pass unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        cause = failed_write(e)
        if cause is None:
            raise
        raise WriteError(path, cause) from e


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, move it over ``path``.

    On error the temporary file is removed and ``path`` is untouched; a failed write is a :class:`WriteError`.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with deferred_interrupts(f"writing {path}"), reported_as(path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError as e:  # a folder above the target is a regular file
                raise WriteError(path, OSError(errno.ENOTDIR, f"{e.filename} is a file, not a folder")) from e
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def torch_save(obj, path: PathLike) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    with atomic_path(path) as tmp:
        torch_save_into(obj, tmp)


def torch_save_into(obj, path: PathLike) -> None:
    """``torch.save`` through a Python file: a failed write then keeps its ``OSError`` (errno) as the context of
    torch's ``RuntimeError`` (given a path, torch's C++ writer reports only ``unexpected pos``)."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def append_text(path: PathLike, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all: a write that fails part-way (disk full, file-size limit) is
    cut back to the file's previous end, so a JSONL file never keeps a half-written row; the failure is a
    :class:`WriteError`."""
    data = text.encode("utf-8")
    with reported_as(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.fstat(fd).st_size
            try:
                done = 0
                while done < len(data):
                    done += os.write(fd, data[done:])
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without error, it replaces ``path``.
    A Ctrl-C or SIGTERM meanwhile waits until the folder is in place (:func:`dpolab.interrupts.deferred_interrupts`).

    An existing ``path`` is first renamed aside and removed only once the new folder is in place, so a kill at any
    moment leaves a complete folder under ``path`` or under its aside name (never a half-written one under ``path``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with reported_as(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    try:
        with deferred_interrupts(f"writing {path}"), reported_as(path):
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                if old.exists():
                    shutil.rmtree(old)
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: PathLike) -> list:
    """Clear what writers killed mid-write left in ``folder``: the ``.NAME.tmp-PID`` / ``.NAME.old-PID`` files and
    folders of processes that no longer run (those of live ones are theirs). A kill between :func:`atomic_dir`'s two
    renames leaves ``NAME`` missing with the complete new folder under its temporary name (complete once the old one
    was moved aside) or only the old one: that one is put back as ``NAME``. Returns the names removed or restored."""
    folder, done = Path(folder), []
    found = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _LEFTOVER.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            found.append((m, p))
    for m, p in sorted(found, key=lambda mp: mp[0]["kind"] != "tmp"):  # a finished new folder before the old one
        target = folder / m["name"]
        complete = m["kind"] == "old" or (folder / f".{m['name']}.old-{m['pid']}").exists()
        if complete and not target.exists() and p.exists():
            os.rename(p, target)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        done.append(p.name)
    return done
