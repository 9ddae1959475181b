"""Pieces shared by the study definitions: model presets, the arithmetic task, warm-up stages, plots."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..stats import mean_ci
from .report import plot_lines
from .runner import RunResult

# cpu size: a tiny GPT-2 with a character tokenizer (trains from scratch in about a minute)
CPU_MODEL = {"name_or_path": "tiny-gpt2", "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4}}
# paper size: a real pretrained model from the hub (needs a network and ideally a GPU)
PAPER_MODEL = {"name_or_path": "EleutherAI/pythia-410m"}


def deep_merge(base: Dict[str, Any], *updates: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for up in updates:
        for k, v in up.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
    return out


def arithmetic_data(n_train: int, n_eval: int, miss: str = "mixed", *, seed: int = 0, label_noise: float = 0.0) -> Dict[str, Any]:
    """The built-in task with its problems fixed by ``seed`` (independent of the training seed)."""
    return {"task": "arithmetic", "max_length": 96,
            "task_args": {"n_train": n_train, "n_eval": n_eval, "miss": miss, "n_terms": [2, 3], "max_value": 20,
                          "seed": seed, "label_noise": label_noise}}


def arithmetic_accuracy_hook(data_cfg: Dict[str, Any], limit: int = 64):
    """Greedy answer accuracy on the task's held-out prompts."""
    from ..config import build_config
    from ..tasks import get_task, rows_for

    data = build_config({"data": data_cfg}).data
    _, eval_rows = rows_for(data.task, data.task_args, "preference", 0)
    return get_task(data.task).metric_hook(eval_rows, "answer_accuracy", max_new_tokens=24, limit=limit)


def mean_series(results: Sequence[RunResult], key: str):
    """Mean over runs (seeds) of a logged series, on the steps all runs share."""
    series = [dict(zip(*r.series(key))) for r in results]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return steps, [mean_ci([s[x] for s in series])[0] for x in steps]


def curves(path: Path, groups: Dict[str, List[RunResult]], panels: Sequence[tuple[str, str]], title: Optional[str] = None) -> Path:
    """One PNG: a panel per (metric key, panel title), a line per group (mean over its seeds)."""
    return plot_lines(path, [(ptitle, "nats" if "delta" in key or "logp" in key else "", {g: mean_series(rs, key) for g, rs in groups.items()})
                             for key, ptitle in panels], title=title)


def arithmetic_sft_spec(run_id: str, base: Dict[str, Any], s: Dict[str, Any], smoke: bool, hook) -> "RunSpec":
    """The SFT warm-up on arithmetic chains that preference stages start from (checkpointed, so it resumes)."""
    from .runner import RunSpec

    return RunSpec(run_id, deep_merge(base, {
        "data": arithmetic_data(3000 if not smoke else 32, 128 if not smoke else 8),
        "train": {"mode": "sft", "max_steps": s["sft_steps"], "batch_size": 32 if not smoke else 8, "lr": s["sft_lr"],
                  "warmup_steps": 50 if not smoke else 0, "schedule": "cosine"},
        "eval": {"every": max(1, s["sft_steps"] // 4)}, "output": {"save_every": 250}}), {"stage": "sft"}, hooks=[hook])
