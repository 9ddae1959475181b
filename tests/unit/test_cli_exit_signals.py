"""Ctrl-C that arrives after the `dpolab` program has done its work is ignored until the process exits (the attack
harness's sigint-right-after-DONE scenario: it landed in torch's exit hook and printed a traceback under exit 0); a
caller's own ``main([...])`` keeps its SIGINT handler."""

from __future__ import annotations

import signal
import sys

import dpolab.cli as cli


def test_the_program_ignores_sigint_once_its_command_is_done(monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(sys, "argv", ["dpolab", "losses"])
    try:
        assert cli.main() == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_caller_keeps_its_sigint_handler(capsys):
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["losses"]) == 0
    assert signal.getsignal(signal.SIGINT) is before
