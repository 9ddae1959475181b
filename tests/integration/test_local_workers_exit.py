"""Worker processes of ``--parallel N`` exit when their driver is killed (a SIGTERM skips the pool's shutdown): they
must not keep training into run folders that a restarted study trains too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = """
import os, sys, time
from dpolab.studies.executors import LocalExecutor

def work(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    LocalExecutor(parallel=2).map(work, [sys.argv[1] + "/a.pid", sys.argv[1] + "/b.pid"])
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if status.exists():  # a zombie (no init to reap it in some containers) has exited
        return "\nState:\tZ" not in status.read_text()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_workers_exit_when_the_driver_is_killed(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], cwd=tmp_path)
    try:
        files = [tmp_path / "a.pid", tmp_path / "b.pid"]
        deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text() for f in files):
            assert driver.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers = [int(f.read_text()) for f in files]
        assert all(_alive(p) for p in workers)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in workers if _alive(p)]
        for p in left:  # do not leave them behind the test
            os.kill(p, signal.SIGKILL)
        assert not left, f"worker processes {left} outlived their killed driver"
    finally:
        if driver.poll() is None:
            driver.kill()
