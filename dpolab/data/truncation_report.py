"""How much truncation cut from a set of tokenised rows: how many prompts and responses, and by how many tokens.

Each row truncation cut carries ``meta["truncated_tokens"]`` (part -> tokens removed; see
:mod:`dpolab.data.tokenize`). :func:`truncation_stats` sums a split up (the numbers the run summary records);
:func:`truncation_line` words them for the load log.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, Iterable, List

from dpolab.data.tokenize import TRUNCATED_TOKENS

_RESPONSE_PARTS = ("chosen", "rejected", "completion")


def _responses_per_row(item: Any) -> int:
    return 2 if hasattr(item, "rejected_ids") else 1


def _removed(values: List[int]) -> Dict[str, Any]:
    if not values:
        return {"median": 0, "max": 0, "total": 0}
    return {"median": statistics.median(values), "max": max(values), "total": sum(values)}


def truncation_stats(items: Iterable[Any]) -> Dict[str, Any]:
    """``rows``, ``prompts_cut``, ``responses`` (2 per pair, 1 per SFT / unpaired row), ``responses_cut``, and the
    tokens removed from the cut ones (``prompt_tokens_removed`` / ``response_tokens_removed``: median, max, total)."""
    items = list(items)
    prompt_cuts: List[int] = []
    response_cuts: List[int] = []
    for it in items:
        cut = (getattr(it, "meta", None) or {}).get(TRUNCATED_TOKENS) or {}
        if cut.get("prompt"):
            prompt_cuts.append(int(cut["prompt"]))
        response_cuts += [int(cut[p]) for p in _RESPONSE_PARTS if cut.get(p)]
    return {
        "rows": len(items),
        "prompts_cut": len(prompt_cuts),
        "prompt_tokens_removed": _removed(prompt_cuts),
        "responses": sum(_responses_per_row(it) for it in items),
        "responses_cut": len(response_cuts),
        "response_tokens_removed": _removed(response_cuts),
    }


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def truncation_line(stats: Dict[str, Any]) -> str:
    """One line, e.g. ``truncation cut 151 of 353 prompts (tokens removed: median 37, max 210) and 12 of 706
    responses (median 5, max 80)``, or ``truncation cut no prompt or response of 353 rows``."""
    if not stats["prompts_cut"] and not stats["responses_cut"]:
        return f"truncation cut no prompt or response of {stats['rows']} rows"
    p, r = stats["prompt_tokens_removed"], stats["response_tokens_removed"]
    prompts = f"{stats['prompts_cut']} of {stats['rows']} prompts"
    if stats["prompts_cut"]:
        prompts += f" (tokens removed: median {_num(p['median'])}, max {p['max']})"
    responses = f"{stats['responses_cut']} of {stats['responses']} responses"
    if stats["responses_cut"]:
        responses += f" (tokens removed: median {_num(r['median'])}, max {r['max']})"
    return f"truncation cut {prompts} and {responses}"
