"""Task metrics from generation with an exact oracle (e.g. the arithmetic task's final value)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

from .generation import generate


def answer_accuracy(model, tokenizer, prompts: Sequence[str], answers: Sequence[Any], parse: Callable[[str], Any], *,
                    max_new_tokens: int = 48, batch_size: int = 64) -> Dict[str, float]:
    """Greedy generation; accuracy = share of generations whose parsed answer equals the true one."""
    outs = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    hits = [parse(o) == a for o, a in zip(outs, answers)]
    parsed = [parse(o) is not None for o in outs]
    return {"answer_accuracy": sum(hits) / max(1, len(hits)), "answer_parsed": sum(parsed) / max(1, len(parsed))}


def answer_accuracy_hook(rows: Sequence[dict], parse: Callable[[str], Any], *, max_new_tokens: int = 48,
                         limit: int = 128) -> Callable[[Any, Any, int], Dict[str, float]]:
    """An engine eval hook scoring rows that have ``prompt`` and ``answer``."""
    rows = list(rows)[:limit]
    prompts: List[str] = [r["prompt"] for r in rows]
    answers = [r["answer"] for r in rows]

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        return answer_accuracy(model, tokenizer, prompts, answers, parse, max_new_tokens=max_new_tokens)

    return hook
