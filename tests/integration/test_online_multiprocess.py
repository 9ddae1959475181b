"""train.mode=online in two processes (``accelerate launch``, CPU, gloo) against one process with the same global
batch: each process samples the completions of its own share of the step's prompts, and the run equals one
process's: per-step loss and ``online/`` statistics, final weights (within 1e-5 absolute, as tests/integration/
test_multiprocess.py: only the order of float additions differs) and ``samples.jsonl`` (every process's samples,
once). The samples of a prompt are seeded by (train.seed, step, the prompt's example index), not by the process
or micro-batch that draws them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpolab.cli import main
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow

TOL = 1e-5
JUDGE = "def spread(prompt, response):\n    return float(sum(map(ord, response)) % 997) / 200\n"
ARGS = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 6, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
    "train.mode=online",
    "train.lr=5e-3",
    "train.schedule=constant",
    "train.max_steps=3",
    "online.judge=mp_judges:spread",
    "online.samples_per_prompt=3",
    "online.max_new_tokens=8",
    "eval.batch_size=4",
    "output.progress=false",
]
STATS = ("loss", "online/judge_mean", "online/judge_ci", "online/tie_rate", "online/kl", "online/eos_rate")
STATS += ("online/sample_tokens", "online/pairs_per_prompt", "online/logp_gap/max")


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    folder = tmp_path / "judges"
    folder.mkdir()
    (folder / "mp_judges.py").write_text(JUDGE)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("mp_judges", None)


def _launch(args, folder: Path) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--main_process_port", str(port), "-m", "dpolab.cli", "train", *args]
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _samples(run: Path) -> list:
    return [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]


def test_two_processes_with_accumulation_equal_one(tmp_path, judge_module):
    """One process of batch 8 against two processes of two micro-batches of 2 prompts each: each prompt's samples
    come out the same whichever process and micro-batch draw them."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *ARGS, "train.batch_size=8", f"output.dir={one}"]) == 0
    proc = _launch([*ARGS, "train.batch_size=2", "train.grad_accum=2", f"output.dir={two}"], judge_module)
    assert proc.stdout.count("done:") == 1
    a = [r for r in read_metrics(one) if "grad_norm" in r]
    b = [r for r in read_metrics(two) if "grad_norm" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in STATS:
            assert rb[k] == pytest.approx(ra[k], abs=TOL), (k, ra["step"], ra[k], rb[k])
    assert a[-1]["online/kl"] != 0.0  # the policy moved: the comparison means something
    ea = [r for r in read_metrics(one) if "eval/loss" in r][-1]
    eb = [r for r in read_metrics(two) if "eval/loss" in r][-1]
    for k in ("eval/loss", "eval/online/judge_mean", "eval/online/tie_rate"):
        assert eb[k] == pytest.approx(ea[k], abs=TOL), k
    wa, wb = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=TOL, rtol=0) for k in wa)
    sa, sb = _samples(one), _samples(two)
    assert len(sa) == 3 * 8 * 3
    key = ("step", "prompt", "completion", "ended")
    assert sorted(tuple(x[k] for k in key) for x in sa) == sorted(tuple(x[k] for k in key) for x in sb)


def test_a_process_whose_samples_all_tie_does_not_stop_the_others(tmp_path, judge_module):
    """The judge ties every sample of process 1 (it scores 0 there) and never those of process 0: process 1 has no
    pair to train on in any step, yet the step's metrics combine (the same names on both processes) and the run
    ends; the loss and the KL are process 0's pairs' alone, each step."""
    (judge_module / "mp_judges.py").write_text(
        JUDGE + "import os\n"
        "def rank_ties(prompt, response):\n"
        "    return 0.0 if os.environ.get('RANK') == '1' else spread(prompt, response)\n"
    )
    args = [a.replace("mp_judges:spread", "mp_judges:rank_ties") for a in ARGS]
    two = tmp_path / "two"
    _launch([*args, "train.batch_size=2", "train.grad_accum=2", f"output.dir={two}"], judge_module)
    rows = [r for r in read_metrics(two) if "grad_norm" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["online/pairs_per_prompt"] == 0.5 and r["online/tie_rate"] == 0.5  # half the prompts tie
        assert r["loss"] > 0 and "online/kl" in r and "online/logp_gap/max" in r


def test_iterative_rounds_in_two_processes_equal_one(tmp_path, judge_module):
    """Iterative mode (online.rounds=2): the main process samples each round's pairs, then both processes train the
    round's preference run, each on its share of every step's pairs. One process of batch 8 against two processes of
    two micro-batches of 2 pairs: the same pairs.jsonl each round (round 2 sampled by the round-1 policy each run
    trained), the same per-round and per-step metrics, evaluations and final weights (within 1e-5)."""
    args = [a for a in ARGS if not a.startswith(("train.max_steps", "train.lr"))]
    # SGD: the same gradients give the same weights to float rounding (1e-8 here); AdamW divides each update by the
    # root of its squared gradients, which turns the float-order noise of near-zero gradients into ~lr-sized
    # differences (1.4e-4 after 2 rounds of 3 steps at lr 5e-3, measured)
    args += ["online.rounds=2", "online.prompts_per_round=8", "online.pairs=all", "train.optimizer=sgd", "train.lr=0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *args, "train.batch_size=8", f"output.dir={one}"]) == 0
    proc = _launch([*args, "train.batch_size=2", "train.grad_accum=2", f"output.dir={two}"], judge_module)
    assert proc.stdout.count("done:") == 1
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["round"] for r in a] == [r["round"] for r in b] == [0, 1, 2]  # round 0: eval.at_start
    for k in ("eval/online/judge_mean", "eval/online/tie_rate"):  # the start's and the last round's evaluation
        assert b[0][k] == pytest.approx(a[0][k], abs=TOL) and b[-1][k] == pytest.approx(a[-1][k], abs=TOL), k
    a, b = a[1:], b[1:]
    for ra, rb in zip(a, b):
        for k in ("online/pairs", "online/prompts", "step", "round_steps"):
            assert ra[k] == rb[k], (k, ra["round"])
        for k in ("loss", "online/judge_mean", "online/judge_ci", "online/tie_rate", "online/sample_tokens"):
            assert rb[k] == pytest.approx(ra[k], abs=TOL), (k, ra["round"], ra[k], rb[k])
    assert a[0]["round_steps"] > 1  # several steps a round: the processes share each step's pairs
    for r in ("round-001", "round-002"):
        pairs = [(x / "rounds" / r / "pairs.jsonl").read_text() for x in (one, two)]
        assert pairs[0] and pairs[0] == pairs[1], r
        steps = [[m for m in read_metrics(x / "rounds" / r / "train") if "grad_norm" in m] for x in (one, two)]
        assert [m["step"] for m in steps[0]] == [m["step"] for m in steps[1]]
        for ma, mb in zip(*steps):
            assert mb["loss"] == pytest.approx(ma["loss"], abs=TOL) and mb["grad_norm"] == pytest.approx(
                ma["grad_norm"], abs=TOL
            )
    start = load_file(str(one / "rounds" / "start" / "model.safetensors"))
    wa, wb = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=TOL, rtol=0) for k in wa)
    assert not all(torch.allclose(wa[k], start[k], atol=1e-4) for k in wa)  # the rounds moved the policy
