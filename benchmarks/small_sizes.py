"""Seconds per step of each stage of the studies' ``small`` size on SmolLM2-135M-Instruct (preset smollm2-135m,
LoRA r=16 unless the stage says full): the numbers behind ``dpolab.studies.budget.MEASURED`` and
docs/results/SMALL_SIZES.md.

    THREADS=1 .venv/bin/python benchmarks/small_sizes.py s2-dpo s2-gen ...     # stages by name (see STAGES below)
    .venv/bin/python benchmarks/small_sizes.py --list

Per stage: real dpolab training (``dpolab.engine.train``) for $STEPS (default 2) optimiser steps at a reduced batch
(the first is warm-up); recorded, as the mean over the steps after the first: wall seconds, its process CPU seconds
(all threads) and the machine's load;
``cpu_s_per_step`` scales the CPU seconds linearly to the study's batch. Generation stages time sampling of review
continuations the same way. Run with THREADS=1 on a shared machine: the CPU time of one thread does not depend on the
load, while wall time and multi-thread CPU time (spinning threads) do. Appends one JSON line per stage to
$OUT (default benchmarks/results/small_sizes.jsonl).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from dpolab.config import build_config
from dpolab.engine import train
from dpolab.engine import trainer as T
from dpolab.studies.common import deep_merge

THREADS = int(os.environ.get("THREADS", "2"))
torch.set_num_threads(THREADS)
M = {"name_or_path": "smollm2-135m"}
D = os.environ.get("DPOLAB_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = os.environ.get("OUT", str(Path(__file__).resolve().parent / "results" / "small_sizes.jsonl"))
LORA = {"enabled": True, "r": 16, "alpha": 32.0}
rec = []
orig = T.Trainer._train_step


def timed(self):
    w, c = time.perf_counter(), time.process_time()
    out = orig(self)
    rec.append((time.perf_counter() - w, time.process_time() - c))
    return out


T.Trainer._train_step = timed


def log(res):
    print(json.dumps(res), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(res) + "\n")


def run(name, cfg, batch, full_batch, steps=int(os.environ.get("STEPS", "2"))):
    rec.clear()
    out = Path(tempfile.mkdtemp(prefix="small-sizes-")) / name
    base = {
        "model": M,
        "lora": LORA,
        "output": {"dir": str(out), "overwrite": True, "progress": False, "save_final": False},
        "eval": {"every": 0, "at_start": False, "max_examples": 4},
        "train": {"max_steps": steps, "log_every": 1, "schedule": "constant", "batch_size": batch, "threads": THREADS},
    }
    c = build_config(deep_merge(base, cfg))
    load = os.getloadavg()[0]
    train(c, log=lambda s: None)
    timed = rec[1:]  # every step after the first (warm-up): their mean
    wall, cpu = sum(w for w, _ in timed) / len(timed), sum(c for _, c in timed) / len(timed)
    k = full_batch / batch
    log(
        {
            "stage": name,
            "batch_measured": batch,
            "study_batch": full_batch,
            "steps_timed": len(timed),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "threads": THREADS,
            "load1": round(load, 1),
            "cpu_s_per_step": round(cpu * k, 1),
            "wall_s_per_step_at_load": round(wall * k, 1),
        }
    )


def gen(name, n, max_new, prompt_len_words=20):
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_base_model, load_tokenizer
    from dpolab.tasks import sentiment as S

    mc = ModelConfig(name_or_path="smollm2-135m")
    tok = load_tokenizer(mc)
    model = load_base_model(mc, tok).eval()
    rows = S.prompt_rows(str(S.local_files(D + "/imdb-cad-sentiment")["test"]), max_rows=n, review_chars=200)
    load = os.getloadavg()[0]
    w, c = time.perf_counter(), time.process_time()
    S.sample_pairs(model, tok, [r["prompt"] for r in rows], n=1, max_new_tokens=max_new, batch_size=64, seed=0)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    log(
        {
            "stage": name,
            "prompts": n,
            "max_new_tokens": max_new,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "load1": round(load, 1),
            "cpu_s_per_sample": round(cpu / n, 3),
        }
    )


def para_eval(name, n=64, batch=64, max_prompt=64):
    """The S1 paraphrase evaluation (label log-probs of n held-out prompts, one forward per batch), per prompt."""
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_base_model, load_tokenizer
    from dpolab.tasks import rows_for
    from dpolab.tasks.paraphrase import label_logps

    mc = ModelConfig(name_or_path="smollm2-135m")
    tok = load_tokenizer(mc)
    model = load_base_model(mc, tok).eval()
    _, rows = rows_for("paraphrase", {"path": Q, "n_train": 2048, "n_eval": 512, "seed": 0}, "sft", 0, tok)
    prompts = [r["prompt"] for r in rows[:n]]
    label_logps(model, tok, prompts[:8], batch_size=8, max_prompt_length=max_prompt)  # warm-up
    load = os.getloadavg()[0]
    w, c = time.perf_counter(), time.process_time()
    got = label_logps(model, tok, prompts, batch_size=batch, max_prompt_length=max_prompt)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    # sameness (untimed): the plain score, a full forward of each unpadded prompt, on the first 8
    from dpolab.tasks.paraphrase import _prompt_ids, label_token_ids

    yes_no = list(label_token_ids(tok))
    with torch.no_grad():
        want = torch.stack(
            [
                model(input_ids=torch.tensor([_prompt_ids(tok, p, max_prompt)]))
                .logits[0, -1]
                .float()
                .log_softmax(-1)[yes_no]
                for p in prompts[:8]
            ]
        )
    err = float((got[:8] - want).abs().max())
    log(
        {
            "stage": name,
            "prompts": n,
            "batch": batch,
            "threads": THREADS,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "load1": round(load, 1),
            "cpu_s_per_prompt": round(cpu / n, 3),
            "max_abs_diff_vs_plain": err,
        }
    )
    if err > 1e-4:
        sys.exit(f"{name}: label log-probs differ from the plain full forward by {err:.2e} (> 1e-4)")


imdb = D + "/imdb-cad-sentiment"
Q = D + "/quora-paraphrase/quora-dev.csv"
para = {
    "task": "paraphrase",
    "max_length": 104,
    "max_prompt_length": 96,
    "task_args": {"path": Q, "n_train": 64, "n_eval": 4},
}
son = {
    "task": "sonnets",
    "max_length": 256,
    "max_prompt_length": 64,
    "task_args": {"path": D + "/shakespeare-sonnets", "n_train": 32, "n_eval": 4},
}
# the sft-dpo small size as it runs since the paraphrase re-size: prompts <= 64 tokens, the study's batches (16 and 8),
# timed at the full batch (no linear scaling from a smaller one)
para16 = dict(para, max_length=66, max_prompt_length=64)
son8 = dict(son, max_length=224, max_prompt_length=64)
stages = {
    "s2-sft": (
        lambda: run(
            "s2-sft",
            {
                "data": {
                    "task": "sentiment",
                    "max_length": 192,
                    "task_args": {"path": imdb, "n_eval": 4, "max_chars": 600},
                },
                "train": {"mode": "sft", "lr": 1e-4},
            },
            2,
            16,
        )
    ),
    "s2-rm": (
        lambda: run(
            "s2-rm",
            {
                "data": {
                    "task": "imdb-cad",
                    "max_length": 128,
                    "task_args": {"path": imdb, "n_eval": 4, "kind": "high", "n_train": 32},
                },
                "train": {"mode": "rm", "lr": 1e-4},
            },
            2,
            16,
        )
    ),
    "s2-dpo": (
        lambda: run(
            "s2-dpo",
            {
                "data": {
                    "task": "imdb-cad",
                    "max_length": 128,
                    "task_args": {"path": imdb, "n_eval": 4, "kind": "high", "n_train": 32},
                },
                "train": {"mode": "preference", "lr": 1e-4},
            },
            2,
            16,
        )
    ),
    "s2-gen": (lambda: gen("s2-gen", 16, 48)),
    "s1-para-sft-lora": (lambda: run("s1-para-sft-lora", {"data": para, "train": {"mode": "sft", "lr": 1e-4}}, 4, 32)),
    "s1-para-sft-full": (
        lambda: run(
            "s1-para-sft-full", {"lora": {"enabled": False}, "data": para, "train": {"mode": "sft", "lr": 1e-5}}, 4, 32
        )
    ),
    "s1-para-dpo-lora": (
        lambda: run("s1-para-dpo-lora", {"data": para, "train": {"mode": "preference", "lr": 1e-4}}, 4, 32)
    ),
    "s1-sonnet-sft-lora": (
        lambda: run("s1-sonnet-sft-lora", {"data": son, "train": {"mode": "sft", "lr": 1e-4}}, 2, 16)
    ),
    "s1-sonnet-sft-full": (
        lambda: run(
            "s1-sonnet-sft-full", {"lora": {"enabled": False}, "data": son, "train": {"mode": "sft", "lr": 1e-5}}, 2, 16
        )
    ),
    "s1-para-sft-full-b16": (
        lambda: run(
            "s1-para-sft-full-b16",
            {"lora": {"enabled": False}, "data": para16, "train": {"mode": "sft", "lr": 1e-5}},
            16,
            16,
        )
    ),
    "s1-para-sft-lora-b16": (
        lambda: run("s1-para-sft-lora-b16", {"data": para16, "train": {"mode": "sft", "lr": 1e-4}}, 16, 16)
    ),
    "s1-para-dpo-full-b16": (
        lambda: run(
            "s1-para-dpo-full-b16",
            {"lora": {"enabled": False}, "data": para16, "train": {"mode": "preference", "lr": 1e-5}},
            16,
            16,
        )
    ),
    "s1-para-dpo-lora-b16": (
        lambda: run("s1-para-dpo-lora-b16", {"data": para16, "train": {"mode": "preference", "lr": 1e-4}}, 16, 16)
    ),
    "s1-sonnet-sft-full-b8": (
        lambda: run(
            "s1-sonnet-sft-full-b8",
            {"lora": {"enabled": False}, "data": son8, "train": {"mode": "sft", "lr": 1e-5}},
            8,
            8,
        )
    ),
    "s1-sonnet-sft-lora-b8": (
        lambda: run("s1-sonnet-sft-lora-b8", {"data": son8, "train": {"mode": "sft", "lr": 1e-4}}, 8, 8)
    ),
    "s1-para-eval-b64": (lambda: para_eval("s1-para-eval-b64")),
    "s3-imdb-dpo": (
        lambda: run(
            "s3-imdb-dpo",
            {
                "data": {
                    "task": "imdb-cad",
                    "max_length": 320,
                    "task_args": {"path": imdb, "n_eval": 4, "kind": "low", "n_train": 32},
                },
                "train": {"mode": "preference", "lr": 1e-4},
            },
            2,
            16,
        )
    ),
    "s34-arith-dpo": (
        lambda: run(
            "s34-arith-dpo",
            {
                "data": {
                    "task": "arithmetic",
                    "max_length": 96,
                    "task_args": {
                        "n_train": 32,
                        "n_eval": 4,
                        "miss": "mixed",
                        "n_terms": [2, 3],
                        "max_value": 20,
                        "seed": 0,
                    },
                },
                "train": {"mode": "preference", "lr": 1e-4},
            },
            2,
            16,
        )
    ),
}
if __name__ == "__main__":
    if sys.argv[1:] in ([], ["--list"]):
        print("\n".join(stages))
    for k in sys.argv[1:]:
        if k != "--list":
            stages[k]()
