"""Failed writes are recognised by exception type and errno and become one line naming the path (issue 32.4);
appends never leave half a row; temporaries of killed writers are cleared (issue 32.6)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dpolab import atomic
from dpolab.atomic import WriteError, failed_write
from dpolab.errors import UserError

LIMITED = textwrap.dedent("""
    import json, resource, sys
    from dpolab import atomic
    path, what = sys.argv[1], sys.argv[2]
    atomic.append_text(path, json.dumps({"step": 1, "loss": 0.5}) + "\\n")
    size = len(open(path, "rb").read())
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, size + 10))  # room for 10 more bytes: half a row
    try:
        if what == "append":
            atomic.append_text(path, json.dumps({"step": 2, "loss": 0.25, "pad": "x" * 40}) + "\\n")
        else:  # torch's zip writer: RuntimeError('unexpected pos ...'), the OSError(EFBIG) as its context
            import torch
            atomic.torch_save({"w": torch.zeros(10000)}, path + ".pt")
    except atomic.WriteError as e:
        print(json.dumps({"error": str(e), "errno": e.errno, "user": isinstance(e, atomic.UserError)}))
""")


@pytest.mark.parametrize("what", ["append", "torch"])
def test_a_file_size_limit_is_one_write_error_and_leaves_no_half_row(tmp_path, what):
    path = tmp_path / "metrics.jsonl"
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(path), what], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    target = path if what == "append" else path.with_name(path.name + ".pt")
    assert out == {"error": f"could not write {target}: File too large", "errno": errno.EFBIG, "user": True}
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1, "loss": 0.5}]  # whole rows only
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_failed_write_goes_by_type_and_errno_not_by_words():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:
        assert failed_write(e) is full  # the context chain holds the errno
    rust = type("SafetensorError", (Exception,), {})("Error while serializing: I/O error: File too large (os error 27)")
    assert failed_write(rust).errno == errno.EFBIG
    assert failed_write(RuntimeError("file write failed: i/o error")) is None  # words, no errno: not a write failure
    assert failed_write(OSError(errno.ECONNREFUSED, "refused")) is None
    assert failed_write(ValueError("bad")) is None


def test_a_read_only_target_is_a_write_error_naming_it(tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "write_text", refuse)
    with pytest.raises(WriteError) as info:
        atomic.write_text(tmp_path / "out.json", "{}")
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
    assert str(info.value) == f"could not write {tmp_path / 'out.json'}: Permission denied"
    assert not list(tmp_path.iterdir())

    def immutable(*a, **k):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "open", immutable)
    with pytest.raises(WriteError, match="could not write .*metrics.jsonl: Operation not permitted"):  # chattr +i
        atomic.append_text(tmp_path / "metrics.jsonl", "{}\n")


def test_an_error_that_is_no_write_failure_keeps_its_type(tmp_path):
    with pytest.raises(KeyError):
        with atomic.atomic_dir(tmp_path / "final"):
            raise KeyError("a bug")
    assert not list(tmp_path.iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / f".final.tmp-{dead}").mkdir()  # a final model half published when the process was killed
    (tmp_path / f".final.tmp-{dead}" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / f".DONE.tmp-{dead}").write_text("ok\n")
    (tmp_path / f".summary.json.tmp-{live}").write_text("{}")  # a running writer's
    (tmp_path / "final").mkdir()
    removed = atomic.remove_stale(tmp_path)
    assert sorted(removed) == sorted([f".final.tmp-{dead}", f".DONE.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["final", f".summary.json.tmp-{live}"])


def test_a_kill_between_the_two_renames_puts_the_complete_folder_back(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".final.old-{dead}").mkdir()  # the old final/ moved aside ...
    (tmp_path / f".final.old-{dead}" / "old").write_text("")
    (tmp_path / f".final.tmp-{dead}").mkdir()  # ... the new one complete, not yet renamed into place
    (tmp_path / f".final.tmp-{dead}" / "new").write_text("")
    atomic.remove_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["final"] and (tmp_path / "final" / "new").exists()


def test_a_metrics_file_that_cannot_be_replaced_is_one_line(tmp_path, monkeypatch):
    from dpolab.engine.logging import MetricsLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run's, immutable (chattr +i)
    real = type(tmp_path).unlink

    def immutable(self, *a, **k):
        if self.name == "metrics.jsonl":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "unlink", immutable)
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'metrics.jsonl'}: Operation not permitted"):
        MetricsLogger(tmp_path)
