"""Batched, seeded generation from token ids: the primitive under :func:`dpolab.evaluation.generation.generate`.

Two ways to decode a batch. ``model.generate`` (transformers) keeps every row of a batch until the longest has
finished; dpolab's own loop (:func:`_decode`: one prefill, then one token per step on a KV cache) drops each row from
the batch, its cache included, once it has produced EOS. Both take the same inputs (left-padded prompts, positions
counted from each prompt's first token, the last position's logits in float32), so greedy outputs agree token for
token (``tests/unit/test_generation_levers.py`` checks them against ``model.generate`` one prompt at a time).

The levers (keyword options of :func:`generate_ids` and :func:`sample_ids`):

- ``sort_by_length``: batches of prompts of similar length (stable sort), so little padding is computed; outputs
  come back in the caller's order.
- ``drop_finished``: dpolab's loop instead of ``model.generate``. It needs a transformers ``DynamicCache`` that takes
  the model's config, an ``eos_id``, and a generation config that adds no logits processor (repetition penalty,
  minimum length, ...); otherwise ``model.generate`` runs. When sampling, every prompt draws from its own generator,
  seeded by ``(seed, its index in the caller's list)``: its tokens do not depend on the batch size, on sorting or on
  which rows have finished (a different stream from ``model.generate``'s, which draws for the whole batch from
  torch's global generator).
- ``static_cache``: ``model.generate`` with transformers' static KV cache (``cache_implementation="static"``), for
  models that transformers says support it; rows cannot be dropped from it.
- ``bf16``: dpolab's loop runs on a bfloat16 copy of the parameters (cast once per call; the model is not changed);
  ``model.generate`` runs under bf16 autocast.

Defaults keep what callers had: greedy decoding sorts and drops finished rows (exact, above); sampling keeps
``model.generate``'s stream unless asked, since sorting and dropping change which tokens a seed draws.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .unwrap import unwrap

# generation-config fields that make ``model.generate`` add a logits processor dpolab's loop does not apply, with the
# value under which they add none
_PROCESSOR_FIELDS = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "guidance_scale": None,
    "watermarking_config": None,
}
_SAMPLING_FIELDS = {"typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


@dataclass
class Sampled:
    """One sampled completion: ``ids`` stop before EOS; ``logps`` is the sampling distribution's log-prob of each of
    ``ids`` and, when ``ended`` (it stopped at EOS), of that EOS last."""

    ids: List[int]
    logps: List[float]
    ended: bool

    @property
    def logp(self) -> float:
        return float(sum(self.logps))


@torch.no_grad()
def generate_ids(
    model,
    prompts: Sequence[List[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    pad_id: Optional[int] = None,
    eos_id: Optional[int] = None,
    sort_by_length: Optional[bool] = None,
    drop_finished: Optional[bool] = None,
    static_cache: bool = False,
    bf16: bool = False,
) -> List[List[int]]:
    """New token ids for each prompt (stopped before EOS, or after ``max_new_tokens``).

    Prompts are left-padded so a batch generates together; sampling is reproducible for a ``seed``. The levers
    (module docstring) default to on for greedy decoding (``None``) and off for sampling.
    """
    sampling = (temperature, top_p) if do_sample else None
    job = _Job(max_new_tokens, batch_size, sampling, seed, pad_id, eos_id, sort_by_length, drop_finished, static_cache)
    rows = _run(model, prompts, job, bf16=bf16, autocast=nullcontext, want_logps=False)
    return [ids for ids, _, _ in rows]


@torch.no_grad()
def sample_ids(
    model,
    prompts: Sequence[List[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    pad_id: Optional[int] = None,
    eos_id: Optional[int] = None,
    autocast: Callable = nullcontext,
    sort_by_length: bool = False,
    drop_finished: bool = False,
    static_cache: bool = False,
    bf16: bool = False,
    row_seeds: Optional[Sequence[int]] = None,
) -> List[Sampled]:
    """One sampled completion per prompt, seeded as :func:`generate_ids`, with each token's log-prob under the
    distribution it was drawn from: ``log_softmax`` of the processed scores (the logits after temperature and top-p,
    as ``generate`` processes them), so at temperature 1 and top-p 1 they are the policy's own log-probs of the
    sampled tokens. The levers (module docstring) are off unless asked: they change the sampled stream.

    ``row_seeds`` (one per prompt) seeds each prompt's own generator (in dpolab's loop, or through
    :class:`_RowSampler` inside ``model.generate``): a completion then depends on its prompt, its seed and the weights
    only, not on its place in the list or the rows batched with it (processes that share out prompts draw what one
    process would)."""
    if row_seeds is not None and len(row_seeds) != len(prompts):
        raise ValueError(f"sample_ids: {len(row_seeds)} row seeds for {len(prompts)} prompts")
    job = _Job(
        max_new_tokens,
        batch_size,
        (temperature, top_p),
        seed,
        pad_id,
        eos_id,
        sort_by_length,
        drop_finished,
        static_cache,
        row_seeds,
    )
    rows = _run(model, prompts, job, bf16=bf16, autocast=autocast, want_logps=True)
    return [Sampled(ids, logps[: len(ids) + int(ended)], ended) for ids, logps, ended in rows]


@dataclass
class _Job:
    """What to generate and how (the caller's options; ``sampling`` is (temperature, top_p), None when greedy)."""

    max_new_tokens: int
    batch_size: int
    sampling: Optional[Tuple[float, float]]
    seed: int
    pad_id: Optional[int]
    eos_id: Optional[int]
    sort_by_length: Optional[bool]
    drop_finished: Optional[bool]
    static_cache: bool
    row_seeds: Optional[Sequence[int]] = None  # sampling: each prompt's generator seed (else from seed and its index)


def _run(model, prompts, job: _Job, *, bf16: bool, autocast: Callable, want_logps: bool):
    """(ids before EOS, per-token log-probs or [], ended) for each prompt, in the caller's order."""
    sampling, eos_id, static_cache = job.sampling, job.eos_id, job.static_cache
    greedy = sampling is None
    sort = greedy if job.sort_by_length is None else job.sort_by_length
    drop = (greedy and not static_cache) if job.drop_finished is None else job.drop_finished
    if drop and static_cache:
        raise ValueError("drop_finished and static_cache exclude each other: rows cannot leave a static KV cache")
    hf = unwrap(model, peft=True)
    if static_cache and not _offers_static_cache(hf):
        raise ValueError(f"transformers offers no static KV cache for {type(hf).__name__}")
    own_loop = drop and _loop_fits(hf, eos_id, sampling is not None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = job.pad_id if job.pad_id is not None else (eos_id if eos_id is not None else 0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if sort else list(range(len(prompts)))
    params = _bf16_params(hf) if bf16 and own_loop else None
    context = autocast
    if bf16 and not own_loop:
        context = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731
    gen = torch.Generator(device="cpu").manual_seed(job.seed)
    out: Dict[int, Tuple[List[int], List[float], bool]] = {}
    try:
        for start in range(0, len(order), job.batch_size):
            index = order[start : start + job.batch_size]
            chunk = [list(prompts[i]) for i in index]
            if own_loop:
                rows = _decode(hf, chunk, index, job, pad, params, context)
            else:
                if sampling is not None:  # seed torch's global generator from ours so each batch is reproducible
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                rows = _generate(model, chunk, job, pad, context, want_logps, index)
            out.update(zip(index, rows))
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(prompts))]


def _generate(model, chunk, job: _Job, pad: int, context: Callable, want_logps: bool, index: Sequence[int] = ()):
    """One batch through ``model.generate``: (ids before EOS, per-token log-probs or [], ended) per row."""
    max_new_tokens, eos_id, sampling = job.max_new_tokens, job.eos_id, job.sampling
    device = next(model.parameters()).device
    input_ids, attn, width = _left_padded(chunk, pad)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling is not None, pad_token_id=pad, eos_token_id=eos_id)
    own = _RowSampler([job.row_seeds[i] for i in index], *sampling) if sampling and job.row_seeds is not None else None
    if sampling is not None:  # with row seeds, the row sampler warps and draws; generate adds no warper
        kwargs.update(temperature=sampling[0] if own is None else 1.0, top_p=sampling[1] if own is None else 1.0)
        kwargs.update(top_k=0, **({} if own is None else {"logits_processor": [own]}))
    if want_logps:
        kwargs.update(output_scores=True, return_dict_in_generate=True)
    if job.static_cache:
        kwargs.update(cache_implementation="static")
    with context():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
    sequences = out.sequences if want_logps else out
    new = sequences[:, width:]
    if want_logps and own is not None:
        token_logps = torch.stack(own.logps, dim=1).tolist()
    elif want_logps:
        scores = torch.stack([s.float() for s in out.scores], dim=1).log_softmax(-1)  # [B, new, V]
        token_logps = scores.gather(-1, new[:, : scores.shape[1], None]).squeeze(-1).tolist()
    else:
        token_logps = [[] for _ in range(len(chunk))]
    rows = []
    for row, lp in zip(new.tolist(), token_logps):
        ids = _until_eos(row, eos_id)
        rows.append((ids, lp, eos_id is not None and eos_id in row))
    return rows


def _decode(hf, chunk, index, job: _Job, pad: int, params, context: Callable):
    """One batch by dpolab's loop: a prefill of the left-padded prompts, then one token per step for the rows that
    have not produced EOS (a finished row leaves the batch and the KV cache). Greedy: the argmax of the last
    position's float32 logits. Sampling: temperature, then top-p as transformers' ``TopPLogitsWarper`` filters, then
    one draw per row from that row's own generator (inverse CDF of a uniform)."""
    from transformers import DynamicCache

    max_new_tokens, eos_id, sampling = job.max_new_tokens, job.eos_id, job.sampling
    device = next(hf.parameters()).device
    sig = inspect.signature(hf.forward).parameters
    cache_key = "cache" if "cache" in sig else "past_key_values"
    keep_logits = {"logits_to_keep": 1} if "logits_to_keep" in sig else {}
    if params is None:
        forward = hf
    else:
        forward = lambda **kw: torch.func.functional_call(hf, params, (), kw)  # noqa: E731
    input_ids, attn, _ = _left_padded(chunk, pad)
    input_ids, attn = input_ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 0)
    cache = DynamicCache(config=hf.config)
    seeds = [_row_seed(job.seed, i) if job.row_seeds is None else int(job.row_seeds[i]) for i in index]
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds] if sampling else []
    ids: List[List[int]] = [[] for _ in chunk]
    logps: List[List[float]] = [[] for _ in chunk]
    ended = [False] * len(chunk)
    live = list(range(len(chunk)))  # the batch's rows, by their place in the chunk
    last = pos[:, -1:]
    with context():
        out = forward(
            input_ids=input_ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            **{cache_key: cache},
            **keep_logits,
        )
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if sampling is None:
            token = logits.argmax(-1)
        else:
            scores = _process(logits, *sampling)
            token = _draw(scores, [gens[r] for r in live])
            row_logps = scores.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1).tolist()
        keep = []
        for j, (r, t) in enumerate(zip(live, token.tolist())):
            if sampling is not None:
                logps[r].append(row_logps[j])
            if t == eos_id:
                ended[r] = True
            else:
                ids[r].append(t)
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(live):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            attn, last, token = attn[sel], last[sel], token[sel]
            live = [live[j] for j in keep]
        attn = torch.cat([attn, attn.new_ones((len(live), 1))], dim=1)
        last = last + 1
        with context():
            out = forward(
                input_ids=token[:, None],
                attention_mask=attn,
                position_ids=last,
                use_cache=True,
                **{cache_key: cache},
                **keep_logits,
            )
    return list(zip(ids, logps, ended))


def _process(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The scores ``generate`` samples from with ``top_k=0``: logits / temperature (when not 1), then top-p (when
    below 1): the smallest tokens whose cumulative probability stays at most 1 - top_p set to -inf, the top one kept."""
    scores = logits / temperature if temperature != 1.0 else logits
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, sorted_idx, drop), -float("inf"))
    return scores


def _draw(scores: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row from ``softmax(scores)``: the first whose cumulative probability exceeds the row's uniform
    (from that row's generator) times the total. A token of probability 0 is never drawn."""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(scores.device)
    cdf = scores.softmax(-1).double().cumsum(-1)
    token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return token.clamp_(max=scores.shape[-1] - 1)


class _RowSampler:
    """A logits processor for ``model.generate`` with row seeds: it processes the scores as :func:`_process` does,
    draws each row's token from that row's own generator (:func:`_draw`) and leaves ``generate`` only that token
    (every other score -inf); ``logps`` collects the drawn tokens' log-probs, step by step."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.sampling = (temperature, top_p)
        self.logps: List[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        processed = _process(scores.float(), *self.sampling)
        token = _draw(processed, self.gens)
        self.logps.append(processed.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token[:, None], 0.0)


def _row_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(index)) % (2**63)


def _bf16_params(hf) -> Dict[str, torch.Tensor]:
    return {name: p.detach().to(torch.bfloat16) for name, p in hf.named_parameters()}


def _loop_fits(hf, eos_id: Optional[int], sampling: bool) -> bool:
    """Whether dpolab's loop gives what ``model.generate`` would: an EOS to stop at, a ``DynamicCache`` built from
    the model's config with rows that can be dropped, a forward that takes positions and a cache, and no logits
    processor from the model's generation config."""
    if eos_id is None or not hasattr(hf, "config"):
        return False
    try:
        from transformers import DynamicCache

        if not hasattr(DynamicCache(config=hf.config), "batch_select_indices"):
            return False
    except (ImportError, TypeError, ValueError):
        return False
    sig = inspect.signature(hf.forward).parameters
    if "position_ids" not in sig or not ({"cache", "past_key_values"} & set(sig)):
        return False
    gc = getattr(hf, "generation_config", None)
    fields = {**_PROCESSOR_FIELDS, **(_SAMPLING_FIELDS if sampling else {})}
    return gc is None or all(getattr(gc, k, plain) in (plain, None) for k, plain in fields.items())


def _offers_static_cache(hf) -> bool:
    """transformers' own flag for a static cache: ``_can_compile_fullgraph`` (5.x), ``_supports_static_cache`` (4.x)."""
    return bool(getattr(hf, "_can_compile_fullgraph", False) or getattr(hf, "_supports_static_cache", False))


def _left_padded(chunk: Sequence[List[int]], pad: int):
    width = max(len(c) for c in chunk)
    input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    attn = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, c in enumerate(chunk):
        input_ids[i, width - len(c) :] = torch.tensor(list(c), dtype=torch.long)
        attn[i, width - len(c) :] = 1
    return input_ids, attn, width


def _until_eos(ids: List[int], eos: Optional[int]) -> List[int]:
    if eos is not None and eos in ids:
        return ids[: ids.index(eos)]
    return ids
