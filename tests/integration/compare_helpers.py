"""A comparison small enough for tests: a one-layer tiny GPT-2 on the built-in arithmetic task, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

from dpolab.studies.compare import CompareOptions

TINY = [
    "data.task_args.n_train=48",
    "data.task_args.n_eval=12",
    "data.max_length=96",
    "model.tiny.n_layer=1",
    "model.tiny.n_embd=32",
    "model.tiny.n_head=2",
    "train.lr=1e-3",
    "eval.probe_greedy_tokens=6",
]


def tiny_options(out: Path, **kw) -> CompareOptions:
    base = dict(
        task="arithmetic",
        methods=["dpo", "ipo", "dpop:lam=50"],
        seeds=2,
        budget="4steps",
        evals=2,
        samples=6,
        max_new_tokens=6,
        out=str(out),
        set=list(TINY),
        cpus=1,
    )
    base.update(kw)
    return CompareOptions(**base).check()


def final_metrics(out: Path) -> dict:
    """run id -> its final evaluation (every probe and held-out measure), from the run folders."""
    runs = Path(out) / "runs"
    return {
        str(p.parent.relative_to(runs)): json.loads(p.read_text())["final_eval"]
        for p in sorted(runs.glob("*/*/summary.json"))
    }
