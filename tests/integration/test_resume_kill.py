"""Exact resume after SIGKILL, and kills during a checkpoint write.

A real `dpolab train` process (fp32, CPU, one thread, dropout on so the RNG state matters, beta-DPO so the
loss state matters, a linear schedule so the scheduler matters, 2 epochs so the data order matters) is
killed with SIGKILL, first while a checkpoint folder is being written, then at an arbitrary later step;
after each kill the newest complete checkpoint must load, and `--resume` must end with weights bitwise
equal to an uninterrupted run, with each step logged exactly once in metrics.jsonl.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpolab.cli import main
from dpolab.engine.checkpoint import latest_checkpoint, load_training_state
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow

STEPS = 24
ARGS = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2, resid_pdrop: 0.1, embd_pdrop: 0.1}",
    "model.dropout=true",
    "data.task=arithmetic",
    "data.task_args={n_train: 48, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.batch_size=4",
    "train.lr=1e-3",
    "train.schedule=linear",
    "train.warmup_steps=3",
    f"train.max_steps={STEPS}",
    "loss=[{name: beta-dpo}, {name: sft, weight: 0.1}]",
    "eval.batch_size=8",
    "eval.every=5",
    "output.progress=false",
    "output.save_every=1",
    "output.keep_last=2",
]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reduction order as the OMP_NUM_THREADS=1 subprocess
    yield
    torch.set_num_threads(n)


def _start(run: Path, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "dpolab.cli", "train", *(["--resume"] if resume else []), *ARGS, f"output.dir={run}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"training ended (rc {proc.returncode}) before the kill point: {proc.stderr.read().decode()[-2000:]}"
            )
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _step(ckpt) -> int:
    return int(ckpt.name.split("-")[1]) if ckpt else 0


def _check_loadable(run: Path) -> int:
    """The newest complete checkpoint loads: weights, optimiser, scheduler, RNG, loss state."""
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    assert load_file(str(ckpt / "model" / "model.safetensors"))
    st = load_training_state(ckpt)
    assert st["state"]["step"] == _step(ckpt) and "beta-dpo" in st["loss_state"]["loss"]
    return _step(ckpt)


def test_sigkill_mid_checkpoint_and_mid_run_then_resume_is_bitwise_exact(tmp_path, one_thread):
    run = tmp_path / "killed"
    ckpts = run / "checkpoints"

    # kill 1: while a checkpoint (not the first) is being written into its temporary folder
    proc = _start(run, resume=False)
    _kill_when(proc, lambda: latest_checkpoint(run) is not None and any(".tmp-" in p.name for p in ckpts.iterdir()))
    first = _check_loadable(run)
    assert not (run / "DONE").exists()

    # kill 2: resumed, then killed at an arbitrary later step (two more checkpoints on); on a very loaded machine
    # the first kill may land late, leaving no room for a second one before the end
    if first + 2 < STEPS - 1:
        proc = _start(run, resume=True)
        _kill_when(proc, lambda: _step(latest_checkpoint(run)) >= first + 2)
        second = _check_loadable(run)
        assert first < second < STEPS

    # resume to the end (in-process), and an uninterrupted reference run
    assert main(["train", "--resume", *ARGS, f"output.dir={run}"]) == 0
    assert main(["train", *ARGS, f"output.dir={tmp_path / 'straight'}"]) == 0

    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(run / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise

    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(run)
    train_a = [(r["step"], r["loss"], r["beta-dpo/beta"], r["lr"]) for r in rows_a if "grad_norm" in r]
    train_b = [(r["step"], r["loss"], r["beta-dpo/beta"], r["lr"]) for r in rows_b if "grad_norm" in r]
    assert [s for s, *_ in train_b] == list(range(1, STEPS + 1))  # no step lost or duplicated
    assert train_a == train_b
    evals_b = [r["step"] for r in rows_b if "eval/loss" in r]
    assert evals_b == sorted(set(evals_b)) == [0, 5, 10, 15, 20, STEPS]
    assert not list(ckpts.glob(".*tmp-*"))  # debris of the killed writer was cleaned up
