"""`dpolab train` / `rm train` interrupted by SIGINT (Ctrl-C) or SIGTERM (what schedulers send): two lines naming the
last complete checkpoint and the exact command that continues the run, exit 130 / 143. At 58b3a56 SIGINT printed
only `interrupted` and SIGTERM killed the process without a word."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpolab.cli import Terminated, main
from dpolab.engine.checkpoint import latest_checkpoint

C = [
    "model.name_or_path=tiny-gpt2",
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.task=arithmetic",
    "train.batch_size=4",
    "train.lr=1e-3",
    "output.progress=false",
]


def _fake_train(exc, make_checkpoint_at=None):
    def train(cfg, resume=False):
        if make_checkpoint_at is not None:
            ckpt = Path(cfg.output.dir) / "checkpoints" / f"step-{make_checkpoint_at:07d}"
            ckpt.mkdir(parents=True)
            (ckpt / "COMPLETE").write_text("")
        raise exc

    return train


@pytest.mark.parametrize(
    "command, exc, rc, name",
    [
        (["train"], KeyboardInterrupt(), 130, "SIGINT"),
        (["train"], Terminated(), 143, "SIGTERM"),
        (["rm", "train"], Terminated(), 143, "SIGTERM"),
    ],
)
def test_interrupt_names_the_checkpoint_and_the_resume_command(tmp_path, monkeypatch, capsys, command, exc, rc, name):
    run = tmp_path / "run dir"  # a space: the printed command must quote it
    monkeypatch.setattr("dpolab.engine.train", _fake_train(exc, make_checkpoint_at=6))
    argv = [*command, *C, f"output.dir={run}", "train.max_steps=400"]
    assert main(argv) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0] == f"interrupted ({name}); last complete checkpoint: {run / 'checkpoints' / 'step-0000006'}"
    assert err[1].startswith("to continue: ")
    assert shlex.split(err[1])[-len(argv) - 1 :] == [*argv, "--resume"]


def test_interrupt_before_any_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr("dpolab.engine.train", _fake_train(KeyboardInterrupt()))
    assert main(["train", "--resume", *C, f"output.dir={run}"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"interrupted (SIGINT); no complete checkpoint yet in {run} (--resume starts from the beginning)"
    assert shlex.split(err[1]).count("--resume") == 1


def test_sigterm_handler_is_only_installed_while_training(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    monkeypatch.setattr(
        "dpolab.engine.train",
        lambda cfg, resume=False: (
            seen.append(signal.getsignal(signal.SIGTERM)) or {"steps": 0, "wall_clock_s": 0.0, "peak_memory_mb": 0.0}
        ),
    )
    assert main(["train", *C, f"output.dir={tmp_path / 'r'}"]) == 0
    assert seen and seen[0] is not before and signal.getsignal(signal.SIGTERM) is before


def _start(run: Path, *extra: str):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "dpolab.cli",
        "train",
        *C,
        f"output.dir={run}",
        "train.max_steps=400",
        "output.save_every=2",
        "data.task_args={n_train: 32, n_eval: 4}",
        "eval.at_start=false",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), cmd


@pytest.mark.slow
def test_sigterm_after_the_first_checkpoint(tmp_path):
    """A real run sent SIGTERM once its first checkpoint is complete (SIGINT is Python's own KeyboardInterrupt: the
    same path, covered in-process above)."""
    run = tmp_path / "run"
    proc, cmd = _start(run)
    try:
        t0 = time.monotonic()
        while latest_checkpoint(run) is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"training ended (rc {proc.returncode}) before its first checkpoint: {proc.stderr.read()[-2000:]}"
                )
            assert time.monotonic() - t0 < 180, "no checkpoint within 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read().strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 143, (rc, err[-5:])
    ckpt = latest_checkpoint(run)
    assert err[-2] == f"interrupted (SIGTERM); last complete checkpoint: {ckpt}", err[-5:]
    assert err[-1] == f"to continue: python -m dpolab.cli {shlex.join([*cmd[3:], '--resume'])}", err[-1]
    assert not (run / "DONE").exists() and not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_sigterm_while_a_checkpoint_is_being_written(tmp_path):
    """SIGTERM that lands inside a checkpoint's save (its temporary folder exists) waits for the folder to be complete,
    then stops the run as usual: exit 143 and the resume hint naming that very checkpoint (an interrupt inside
    torch.save once ended in torch's 'unexpected pos' traceback and exit 1)."""
    run = tmp_path / "run"
    proc, cmd = _start(run)
    try:
        t0, writing = time.monotonic(), None
        while writing is None:
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before a checkpoint: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() - t0 < 180, "no checkpoint being written within 180 s"
            ckpts = run / "checkpoints"
            writing = next((p for p in ckpts.glob(".step-*.tmp-*")), None) if ckpts.is_dir() else None
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read().strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 143, (rc, err[-5:])
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name >= writing.name.split(".")[1], (ckpt, writing)  # that one, or a later one
    assert err[-2] == f"interrupted (SIGTERM); last complete checkpoint: {ckpt}", err[-5:]
    assert not any("Traceback" in line for line in err), err
