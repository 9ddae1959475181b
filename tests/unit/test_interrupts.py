"""Ctrl-C and SIGTERM wait for a write in progress (dpolab/interrupts.py): a checkpoint whose save was interrupted
once is completed, then the interruption is delivered; a second one is delivered at once; and an error that a
library's clean-up raised over an interrupt still counts as that interrupt (exit 130/143, not a traceback)."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from dpolab import atomic, cli
from dpolab.interrupts import deferred_interrupts, interrupt_behind


class _Stop(Exception):
    pass


@pytest.fixture
def sigterm_raises():
    def handler(signum, frame):
        raise _Stop(signum)

    before = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


def test_one_sigterm_during_a_folder_write_waits_for_the_folder(tmp_path, sigterm_raises, capsys):
    target = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        with atomic.atomic_dir(target) as tmp:
            os.kill(os.getpid(), signal.SIGTERM)
            atomic.torch_save_into({"w": torch.arange(10_000)}, tmp / "a.pt")  # the handler has run by now
            (tmp / "b.txt").write_text("done")
    assert (target / "b.txt").read_text() == "done"
    assert torch.equal(torch.load(target / "a.pt")["w"], torch.arange(10_000))
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises
    assert f"SIGTERM: finishing writing {target} first (send it again to stop at once)" in capsys.readouterr().err


def test_a_second_signal_is_delivered_at_once(tmp_path, sigterm_raises):
    target = tmp_path / "ckpt"
    reached = []
    with pytest.raises(_Stop):
        with atomic.atomic_dir(target) as tmp:
            os.kill(os.getpid(), signal.SIGTERM)
            (tmp / "a").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            (tmp / "b").write_text("x")
            reached.append(True)
    assert not reached and not target.exists() and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_nested_writes_keep_one_hold_and_a_second_signal_still_stops_at_once(tmp_path, sigterm_raises, capsys):
    reached = []
    with pytest.raises(_Stop):
        with atomic.atomic_dir(tmp_path / "outer") as tmp:
            atomic.write_text(tmp / "inner.txt", "x")  # an atomic write inside the folder's write
            os.kill(os.getpid(), signal.SIGTERM)
            with atomic.atomic_path(tmp / "f") as inner:
                inner.write_text("y")
                os.kill(os.getpid(), signal.SIGTERM)
                inner.write_text("z")
                reached.append(True)
    assert not reached and signal.getsignal(signal.SIGTERM) is sigterm_raises
    assert capsys.readouterr().err.count("finishing") == 1


def test_ctrl_c_waits_then_raises_keyboard_interrupt(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "f.txt") as tmp:
            os.kill(os.getpid(), signal.SIGINT)
            tmp.write_text("whole")
    assert (tmp_path / "f.txt").read_text() == "whole"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_inside_the_block_wins_over_the_held_signal(sigterm_raises):
    with pytest.raises(ValueError):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10))
            raise ValueError("disk full, say")
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_outside_the_main_thread_the_block_runs_unchanged():
    seen = []

    def work():
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


def test_default_sigterm_still_terminates_after_the_write(tmp_path):
    """With no handler of Python's (SIG_DFL), the held SIGTERM ends the process the usual way once the file is in
    place."""
    code = (
        "import os, signal, sys; from dpolab import atomic\n"
        "with atomic.atomic_path(sys.argv[1]) as tmp:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    tmp.write_text('whole')\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc
    assert (tmp_path / "f").read_text() == "whole" and "not reached" not in proc.stdout


def test_interrupt_behind_follows_the_chain():
    try:
        try:
            raise KeyboardInterrupt()
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos 329984 vs 329876")
    except RuntimeError as e:
        assert isinstance(interrupt_behind(e), KeyboardInterrupt)
    assert interrupt_behind(RuntimeError("plain")) is None


@pytest.mark.parametrize("interrupt, status", [(KeyboardInterrupt(), 130), (cli.Terminated(), 143)])
def test_cli_reports_an_interrupt_that_a_clean_up_error_replaced(tmp_path, monkeypatch, capsys, interrupt, status):
    def fake_train(cfg, resume=False):
        try:
            raise interrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 329984 vs 329876")

    monkeypatch.setattr("dpolab.engine.train", fake_train)
    run = tmp_path / "run"
    assert cli.main(["train", "data.task=arithmetic", "output.progress=false", f"output.dir={run}"]) == status
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and "unexpected pos" not in err
