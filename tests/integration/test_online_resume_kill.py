"""train.mode=online killed with SIGKILL mid-run, then ``--resume``: the final weights, the logged training rows and
the rows of ``samples.jsonl`` equal an uninterrupted run's, bitwise (the sampling is seeded from the step, so no RNG
state is needed; the rows the killed process sampled after its last checkpoint are dropped, not kept twice).

A real ``dpolab train`` process (fp32, CPU, one thread, dropout on, a linear schedule) is killed once it has written
samples of a step its newest checkpoint does not hold, so the dropped rows are always there to drop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpolab.cli import main
from dpolab.engine.checkpoint import latest_checkpoint
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow

STEPS = 8
JUDGE = "def spread(prompt, response):\n    return float(sum(map(ord, response)) % 997) / 200\n"
ARGS = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2, resid_pdrop: 0.1, embd_pdrop: 0.1}",
    "model.dropout=true",
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.mode=online",
    "train.batch_size=4",
    "train.lr=5e-3",
    "train.schedule=linear",
    f"train.max_steps={STEPS}",
    "online.judge=kill_judges:spread",
    "online.samples_per_prompt=3",
    "online.max_new_tokens=8",
    "eval.batch_size=8",
    "eval.every=3",
    "output.progress=false",
    "output.save_every=2",
]


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    folder = tmp_path / "judges"
    folder.mkdir()
    (folder / "kill_judges.py").write_text(JUDGE)
    monkeypatch.syspath_prepend(str(folder))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reduction order as the OMP_NUM_THREADS=1 subprocess
    yield folder
    torch.set_num_threads(n)
    sys.modules.pop("kill_judges", None)


def _samples(run: Path) -> list:
    return [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]


def _sampled_past_checkpoint(run: Path) -> bool:
    ckpt = latest_checkpoint(run)
    if ckpt is None or not (run / "samples.jsonl").exists():
        return False
    try:
        steps = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    except (json.JSONDecodeError, KeyError):
        return False  # a row being written
    return max(steps) > int(ckpt.name.split("-")[1])


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, judge_module):
    run = tmp_path / "killed"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(judge_module), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "dpolab.cli", "train", *ARGS, f"output.dir={run}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not _sampled_past_checkpoint(run):
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before the kill point: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > 120:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = max(x["step"] for x in _samples(run))
    assert not (run / "DONE").exists() and killed_at < STEPS

    assert main(["train", "--resume", *ARGS, f"output.dir={run}"]) == 0
    assert main(["train", *ARGS, f"output.dir={tmp_path / 'straight'}"]) == 0

    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(run / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise
    keys = ("step", "loss", "lr", "online/judge_mean", "online/kl", "online/tie_rate")
    train_a = [tuple(r.get(k) for k in keys) for r in read_metrics(tmp_path / "straight") if "grad_norm" in r]
    train_b = [tuple(r.get(k) for k in keys) for r in read_metrics(run) if "grad_norm" in r]
    assert [r[0] for r in train_b] == list(range(1, STEPS + 1)) and train_a == train_b
    sa, sb = _samples(tmp_path / "straight"), _samples(run)
    assert [x["step"] for x in sb] == sorted(x["step"] for x in sb)  # no step sampled twice
    assert sa == sb and len(sa) == STEPS * 4 * 3
