"""Task metrics from generation with an oracle: an exact one (the arithmetic task's final value) or an oracle
reward (the sentiment task's VADER score, :func:`oracle_reward_eval`)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence, Union

from .generation import generate


def answer_accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[Any],
    parse: Callable[[str], Any],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> Dict[str, float]:
    """Greedy generation; accuracy = share of generations whose parsed answer equals the true one."""
    outs = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    hits = [parse(o) == a for o, a in zip(outs, answers)]
    parsed = [parse(o) is not None for o in outs]
    return {"answer_accuracy": sum(hits) / max(1, len(hits)), "answer_parsed": sum(parsed) / max(1, len(parsed))}


def answer_accuracy_hook(
    rows: Sequence[dict], parse: Callable[[str], Any], *, max_new_tokens: int = 48, limit: int = 128
) -> Callable[[Any, Any, int], Dict[str, float]]:
    """An engine eval hook scoring rows that have ``prompt`` and ``answer``."""
    rows = list(rows)[:limit]
    prompts: List[str] = [r["prompt"] for r in rows]
    answers = [r["answer"] for r in rows]

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        return answer_accuracy(model, tokenizer, prompts, answers, parse, max_new_tokens=max_new_tokens)

    return hook


def oracle_reward_eval(
    model,
    tokenizer,
    prompts: Sequence[str],
    oracle: Union[str, Callable[[Sequence[str]], List[float]]] = "vader",
    *,
    n_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
) -> Dict[str, float]:
    """Mean oracle reward of sampled continuations (the S2 metric).

    Each prompt gets ``n_samples`` continuations (temperature / top-p sampling, seeded: the same ``seed`` gives the
    same generations), scored by ``oracle`` (a name from :mod:`dpolab.rewards.oracles`, e.g. 'vader', or a
    callable on a list of texts); the per-prompt mean is averaged over prompts. Returns ``oracle_reward`` (the
    mean), ``oracle_reward_ci`` (half-width of its 95 % t-interval over prompts; nan for one prompt) and ``n``
    (prompts).
    """
    from ..rewards.oracles import get_oracle
    from ..stats import mean_ci

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("oracle_reward_eval needs at least one prompt")
    score = get_oracle(oracle)
    flat = [p for p in prompts for _ in range(n_samples)]
    outs = generate(
        model,
        tokenizer,
        flat,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    rewards = score(outs)
    per_prompt = [sum(rewards[i * n_samples : (i + 1) * n_samples]) / n_samples for i in range(len(prompts))]
    mean, half = mean_ci(per_prompt)
    return {"oracle_reward": mean, "oracle_reward_ci": half, "n": float(len(prompts))}


def oracle_reward_hook(
    rows: Sequence[Union[str, dict]],
    oracle: Union[str, Callable[[Sequence[str]], List[float]]] = "vader",
    *,
    limit: int = 128,
    n_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
) -> Callable[[Any, Any, int], Dict[str, float]]:
    """An engine eval hook logging ``eval/oracle_reward`` and ``eval/oracle_reward_ci`` on the first ``limit``
    prompts (texts, or rows with ``prompt``). Every evaluation uses the same ``seed``, so successive evaluations
    differ only by the model. A nan interval (one prompt) is left out of the metrics."""
    prompts = [r["prompt"] if isinstance(r, dict) else r for r in list(rows)[:limit]]
    if not prompts:
        raise ValueError("oracle_reward_hook needs at least one prompt")

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        res = oracle_reward_eval(
            model,
            tokenizer,
            prompts,
            oracle,
            n_samples=n_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
        )
        out = {"oracle_reward": res["oracle_reward"]}
        if math.isfinite(res["oracle_reward_ci"]):
            out["oracle_reward_ci"] = res["oracle_reward_ci"]
        return out

    return hook
