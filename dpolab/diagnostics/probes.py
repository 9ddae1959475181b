"""Likelihood probes: what preference training does to the probability of fixed responses.

A :class:`ProbeSet` is built once from evaluation pairs, before training. For each probe prompt it holds
five responses, scored (summed response log-prob) at every evaluation:

- ``chosen`` and ``rejected``: the pair's own responses;
- ``others``: the chosen response of a *different* probe prompt (an unrelated but fluent response);
- ``random``: uniformly random tokens, as long as the chosen response;
- ``greedy``: the starting model's greedy (argmax) continuation of the prompt, generated once.

Along the chosen response it also records ``argmax_mass``: the summed log-prob of the most likely token at
each response position (the squeezing effect, Ren & Sutherland 2025, arXiv 2407.10490, shows up as this
rising while chosen, rejected and others fall).

Deltas are against the start of training (the first evaluation, which with policy == reference is also the
reference's value). Everything runs in eval mode, batched, without gradients. A probe's reward accuracy counts
strict wins of its margin (Δ chosen − Δ rejected); a margin within float32 rounding of the four sums it is made of
(:func:`dpolab.models.preference_logps.tie_tolerance`) is a tie, never a win.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..data.types import TokenizedPair
from ..models.logprobs import gather_logps
from ..models.preference_logps import pair_outcomes, tie_tolerance


@dataclass
class ProbeSet:
    prompts: List[List[int]]
    responses: Dict[str, List[List[int]]]
    buckets: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def _bucket(pair: TokenizedPair, edges: Optional[Sequence[int]]) -> str:
    """The pair's edit-distance bucket: set by the data (``meta['edit_bucket']``), else from the token edit
    distance of chosen and rejected with ``edges`` (None: one bucket, 'all')."""
    meta = pair.meta or {}
    if meta.get("edit_bucket"):
        return str(meta["edit_bucket"])
    if edges is None:
        return "all"
    from .edit_distance import edit_bucket, token_edit_distance

    return edit_bucket(token_edit_distance(pair.chosen_ids, pair.rejected_ids), tuple(edges))


def build_probe_set(
    pairs: Sequence[TokenizedPair],
    tokenizer,
    *,
    n: int = 64,
    seed: int = 0,
    model=None,
    greedy_tokens: int = 32,
    batch_size: int = 32,
    edges: Optional[Sequence[int]] = (4, 16),
) -> ProbeSet:
    """Probe set from the first ``n`` pairs; ``model`` (the starting policy) supplies the greedy responses."""
    pairs = list(pairs)[:n]
    if not pairs:
        raise ValueError("no pairs to build probes from")
    rng = random.Random(seed)
    special = {
        i
        for i in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
        if i is not None
    }
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    k = len(pairs)
    responses: Dict[str, List[List[int]]] = {
        "chosen": [p.chosen_ids for p in pairs],
        "rejected": [p.rejected_ids for p in pairs],
        # another prompt's response; with a single pair there is no other prompt, so it is its own rejected
        "others": [pairs[(i + 1) % k].chosen_ids if k > 1 else pairs[0].rejected_ids for i in range(k)],
        "random": [[rng.choice(vocab) for _ in p.chosen_ids] for p in pairs],
    }
    if model is not None:
        responses["greedy"] = greedy_responses(
            model,
            [p.prompt_ids for p in pairs],
            tokenizer.eos_token_id,
            max_new_tokens=greedy_tokens,
            batch_size=batch_size,
            pad_id=tokenizer.pad_token_id,
        )
    return ProbeSet(
        prompts=[p.prompt_ids for p in pairs], responses=responses, buckets=[_bucket(p, edges) for p in pairs]
    )


@torch.no_grad()
def greedy_responses(
    model,
    prompts: List[List[int]],
    eos_id: Optional[int],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: Optional[int],
) -> List[List[int]]:
    """Greedy continuations (token ids, EOS kept when produced; never empty)."""
    from ..models.generation import generate_ids

    outs = generate_ids(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, pad_id=pad_id, eos_id=eos_id
    )
    # generate_ids stops *before* EOS: a response shorter than the budget ended with EOS, which we score too
    return [o + [eos_id] if eos_id is not None and len(o) < max_new_tokens else o for o in outs]


def _batch(prompts: List[List[int]], responses: List[List[int]], pad_id: int, device) -> Dict[str, Tensor]:
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        mask[i, len(p) : len(s)] = True
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "loss_mask": mask.to(device)}


@torch.no_grad()
def score_probes(
    model, probes: ProbeSet, pad_id: int, *, batch_size: int = 32, autocast=nullcontext
) -> Dict[str, Tensor]:
    """Per-probe summed log-probs [n] for each category (in probe order), plus ``argmax_mass`` along the chosen
    response. Each category is scored longest first; every category but ``chosen`` (whose argmax mass needs every
    logit) goes through the packed layout and response-only head of :func:`dpolab.models.fastpath.logps_for_batch`,
    as training scores (the plain forward's log-probs to float rounding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: Dict[str, Tensor] = {}
    for cat, resp in probes.responses.items():
        order = sorted(range(len(probes)), key=lambda i: (-(len(probes.prompts[i]) + len(resp[i])), i))
        sums = torch.zeros(len(probes))
        mass = torch.zeros(len(probes)) if cat == "chosen" else None
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            prompts, responses = [probes.prompts[i] for i in idx], [resp[i] for i in idx]
            if mass is None:
                sums[idx] = _fast_sums(model, prompts, responses, pad_id, device, autocast)
                continue
            b = _batch(prompts, responses, pad_id, device)
            with autocast():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            sums[idx] = gather_logps(logits, b["input_ids"], b["loss_mask"]).sums.float().cpu()
            top = logits[:, :-1].float().log_softmax(-1).max(-1).values
            mass[idx] = (top * b["loss_mask"][:, 1:]).sum(-1).float().cpu()
        out[cat] = sums
        if mass is not None:
            out["argmax_mass"] = mass
    model.train(was_training)
    return out


def _fast_sums(model, prompts, responses, pad_id: int, device, autocast) -> Tensor:
    """Summed response log-probs of prompt + response rows, packed, through the response-only head."""
    from ..data.collate import collate_sft_fast
    from ..data.types import TokenizedSFT
    from ..models.fastpath import logps_for_batch

    rows = [TokenizedSFT(prompt_ids=list(p), completion_ids=list(r)) for p, r in zip(prompts, responses)]
    batch = collate_sft_fast(rows, pad_id, "packed").to(device)
    with autocast():
        return logps_for_batch(model, batch).sums.float().cpu()


def probe_metrics(
    scores: Dict[str, Tensor], baseline: Optional[Dict[str, Tensor]], buckets: Sequence[str], prefix: str = "probe/"
) -> Dict[str, float]:
    """Means per category, deltas against ``baseline``, margin and reward accuracy, overall and per bucket."""
    metrics: Dict[str, float] = {}
    groups = {"": list(range(len(buckets)))}
    names = sorted(set(buckets))
    if len(names) > 1:
        groups.update({f"{b}/": [i for i, x in enumerate(buckets) if x == b] for b in names})
    for g, idx in groups.items():
        ix = torch.tensor(idx, dtype=torch.long)
        for cat, v in scores.items():
            metrics[f"{prefix}{g}logp/{cat}"] = float(v[ix].mean())
        if baseline is None:
            continue
        delta = {cat: scores[cat][ix] - baseline[cat][ix] for cat in scores if cat in baseline}
        for cat, d in delta.items():
            metrics[f"{prefix}{g}delta/{cat}"] = float(d.mean())
        if "chosen" in delta and "rejected" in delta:
            m = delta["chosen"] - delta["rejected"]
            metrics[f"{prefix}{g}margin"] = float(m.mean())
            sums = [scores[c][ix] for c in ("chosen", "rejected")] + [baseline[c][ix] for c in ("chosen", "rejected")]
            wins, _ = pair_outcomes(m, tie_tolerance(sums, []))
            metrics[f"{prefix}{g}reward_accuracy"] = float(wins.float().mean())
    return metrics
