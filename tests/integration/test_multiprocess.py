"""Two processes through `accelerate launch` (CPU, gloo) against one process with the same global batch.

One process runs train.batch_size=8; two run batch_size=4 each (global batch = batch_size * grad_accum *
num_processes = 8 in both). Tolerance: per-step training loss, final eval loss and final weights within
1e-5 absolute (observed ~1e-7: only the order of float additions differs, in the all-reduce of gradients).
Also checked: beta-DPO's statistics (beta, kept) and AOT's sorting are global (over processes and micro-batches),
MADPO's per-pair margins follow their pairs, the precomputed reference cache is written once, and metrics, checkpoints
and the summary are written once.
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

from dpolab.cli import main
from dpolab.engine.logging import read_metrics

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "dpolab" / "configs" / "accelerate"
COMMON = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "eval.batch_size=8",
    "output.progress=false",
    "data.max_length=48",
    "train.lr=1e-3",
    "train.schedule=constant",
    "output.save_every=2",
]
TASK = ["data.task=arithmetic", "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}"]
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, *, config_file=None, target=("-m", "dpolab.cli", "train")) -> subprocess.CompletedProcess:
    """`accelerate launch` two CPU processes running `dpolab train` or ``target`` (never a home-made launcher)."""
    how = ["--config_file", str(config_file)] if config_file else ["--multi_gpu", "--num_processes", "2"]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *how,
        "--main_process_port",
        str(_free_port()),
        *target,
        *args,
    ]
    env = dict(
        os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES=""
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_rows(run):
    return [r for r in read_metrics(run) if "grad_norm" in r]


def _weights(run):
    from safetensors.torch import load_file

    final = Path(run) / "final"
    return load_file(
        str(
            final / "model.safetensors"
            if (final / "model.safetensors").exists()
            else final / "adapter_model.safetensors"
        )
    )  # a LoRA run saves its adapter


def _compare(one, two, keys=("loss",)):
    a, b = _train_rows(one), _train_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(a) + 1))  # each step logged once
    for ra, rb in zip(a, b):
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], abs=TOL), (k, ra["step"], ra[k], rb[k])
    ea = [r for r in read_metrics(one) if "eval/loss" in r][-1]
    eb = [r for r in read_metrics(two) if "eval/loss" in r][-1]
    assert eb["eval/loss"] == pytest.approx(ea["eval/loss"], abs=TOL)
    wa, wb = _weights(one), _weights(two)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=TOL, rtol=0), k
    return a, b


def _written_once(run, proc):
    assert proc.stdout.count("done:") == 1, proc.stdout  # one summary, not one per process
    assert [p.name for p in sorted((Path(run) / "checkpoints").iterdir())] == ["step-0000002", "step-0000004"]
    assert not list(Path(run).rglob(".tmp*")) and not list(Path(run).rglob("*.tmp*"))
    assert (Path(run) / "DONE").exists() and (Path(run) / "summary.json").exists()


@pytest.mark.parametrize(
    "split", [["train.batch_size=4"], ["train.batch_size=2", "train.grad_accum=2"]], ids=["2x4", "2x2x2accum"]
)
def test_two_processes_match_one_beta_dpo(tmp_path, split):
    """beta-DPO: batch statistics over the whole step (every process, every micro-batch), the same pairs drawn as
    one process with one batch of 8."""
    args = [*COMMON, *TASK, "train.max_steps=4", "loss=[{name: beta-dpo, params: {rho: 0.25}}]"]
    assert main(["train", *args, "train.batch_size=8", f"output.dir={tmp_path / 'one'}"]) == 0
    proc = _launch([*args, *split, f"output.dir={tmp_path / 'two'}"])
    a, b = _compare(tmp_path / "one", tmp_path / "two", keys=("loss", "beta-dpo/beta", "beta-dpo/kept", "beta-dpo/M0"))
    assert all(r["beta-dpo/kept"] == 6 for r in b)  # floor(8 * 0.75) of the global batch, not per process
    assert len({round(r["beta-dpo/beta"], 6) for r in b}) > 1  # beta really moved, and identically
    _written_once(tmp_path / "two", proc)


def test_two_processes_match_one_aot(tmp_path):
    """AOT sorts over the whole step: two processes of 4 pairs give one process's batch of 8."""
    args = [*COMMON, *TASK, "train.max_steps=4", "loss=[{name: aot}, {name: aot-unpaired, weight: 0.5}]"]
    assert main(["train", *args, "train.batch_size=8", f"output.dir={tmp_path / 'one'}"]) == 0
    proc = _launch([*args, "train.batch_size=4", f"output.dir={tmp_path / 'two'}"])
    _compare(tmp_path / "one", tmp_path / "two", keys=("loss", "loss/aot", "loss/aot-unpaired"))
    _written_once(tmp_path / "two", proc)


def test_two_processes_match_one_madpo_precomputed_reference(tmp_path):
    """MADPO's rm_margin travels with its pair; the precomputed reference cache is computed and written once.
    Launched with the packaged DDP config."""
    data = tmp_path / "pairs.jsonl"
    rows = []
    for i in range(16):
        a, b = i % 7 + 1, (3 * i) % 5 + 1
        rows.append(
            {
                "prompt": f"Q: {a}+{b}\nA: ",
                "chosen": f"{a}+{b}={a + b}",
                "rejected": f"{a}+{b}={a + b + 1 + i % 3}",
                "rm_margin": (i - 8) / 2.0,
            }
        )
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        *COMMON,
        f"data.train={data}",
        "data.eval_fraction=0.25",
        "data.extras=[rm_margin]",
        "train.max_steps=4",
        "reference.mode=precomputed",
        "loss=[{name: madpo}]",
    ]
    assert main(["train", *args, "train.batch_size=4", f"output.dir={tmp_path / 'one'}"]) == 0
    proc = _launch([*args, "train.batch_size=2", f"output.dir={tmp_path / 'two'}"], config_file=CONFIGS / "ddp.yaml")
    _compare(
        tmp_path / "one", tmp_path / "two", keys=("loss", "madpo/weight/mean", "madpo/weight/min", "madpo/weight/max")
    )
    _written_once(tmp_path / "two", proc)
    caches = list((tmp_path / "two" / "ref_cache").iterdir())
    assert len(caches) == 1 and caches[0].suffix == ".pt"


def test_two_processes_match_one_sft(tmp_path):
    """SFT: the token-mean over the global batch, whatever the split of tokens between processes."""
    args = [*COMMON, *TASK, "train.mode=sft", "train.max_steps=4"]
    assert main(["train", *args, "train.batch_size=8", f"output.dir={tmp_path / 'one'}"]) == 0
    proc = _launch([*args, "train.batch_size=4", f"output.dir={tmp_path / 'two'}"])
    _compare(tmp_path / "one", tmp_path / "two")
    _written_once(tmp_path / "two", proc)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_packaged_accelerate_configs_load(name):
    """Every packaged config parses with Accelerate's own loader (FSDP and DeepSpeed need GPUs to run)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.num_processes == 2 and cfg.num_machines == 1
    assert str(cfg.mixed_precision) == "no"  # dpolab's own autocast (train.bf16) handles precision
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}[
        name
    ]
    assert cfg.distributed_type.value == expected
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


WORKER = Path(__file__).resolve().parent / "multiprocess_worker.py"


@pytest.mark.parametrize("loss", ["beta-dpo", "aot"])
def test_a_set_smaller_than_one_global_batch_and_a_sharded_eval_match_one_process(tmp_path, loss):
    """10 training pairs, batch 4, accumulation 2, two processes (a global batch of 16): each process gets micro-batches
    of 4 and 1 pairs (they used to get [4, 2] and [4], and the batch-level loss's gathers hung). 10 eval pairs in
    batches of 4: rank 0 scores batches 0 and 2, rank 1 batch 1, and the gathered metrics are one process's."""
    task = ["data.task=arithmetic", "data.task_args={n_train: 10, n_eval: 10, n_terms: [2, 2], max_value: 9}"]
    args = [*COMMON, *task, "eval.batch_size=4", "train.max_steps=4", "train.grad_accum=2", f"loss=[{{name: {loss}}}]"]
    assert main(["train", *args, "train.batch_size=8", f"output.dir={tmp_path / 'one'}"]) == 0
    (tmp_path / "ranks").mkdir()
    _launch(
        [str(tmp_path / "ranks"), *args, "train.batch_size=4", f"output.dir={tmp_path / 'two'}"], target=(str(WORKER),)
    )
    _compare(tmp_path / "one", tmp_path / "two", keys=("loss", f"loss/{loss}") if loss == "aot" else ("loss",))
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    passes = 2  # eval.at_start and the final evaluation
    assert ranks[0]["eval_batches"] == [[0, 1, 2, 3], [8, 9]] * passes
    assert ranks[1]["eval_batches"] == [[4, 5, 6, 7]] * passes
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["final_eval"]
    for r in ranks:  # every process returns the gathered metrics, equal to one process's
        assert r["final_eval"].keys() == one.keys()
        for k, v in one.items():
            assert r["final_eval"][k] == pytest.approx(v, abs=TOL), k


@pytest.mark.parametrize(
    "tuning",
    [["reference.mode=copy"], ["lora.enabled=true", "lora.r=4", "reference.mode=adapter"]],
    ids=["full", "lora"],
)
def test_ddp_gradients_with_accumulation_and_the_fast_path_match_one_process(tmp_path, tuning):
    """Under DDP, with accumulation and the default fast path (prefix layout, response logits), the trained
    parameters (full weights, or LoRA's adapters) after 4 steps equal one process's: the gradient all-reduce happens
    (calling the unwrapped module would skip it and the processes' weights would drift apart)."""
    args = [*COMMON, *TASK, "train.max_steps=4", "train.grad_accum=2", "loss=[{name: dpo}]", *tuning]
    assert main(["train", *args, "train.batch_size=4", f"output.dir={tmp_path / 'one'}"]) == 0
    _launch([*args, "train.batch_size=2", f"output.dir={tmp_path / 'two'}"])
    a, _ = _compare(tmp_path / "one", tmp_path / "two")
    assert a[-1]["loss"] != pytest.approx(a[0]["loss"], abs=1e-3)  # the weights moved: the comparison means something
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["reference_mode"] == tuning[-1].split("=")[1]
