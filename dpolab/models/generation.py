"""Batched, seeded generation from token ids: the primitive under :func:`dpolab.evaluation.generation.generate`."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch


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
) -> List[List[int]]:
    """New token ids for each prompt (stopped before EOS, or after ``max_new_tokens``).

    Prompts are left-padded so a batch generates together; sampling is reproducible for a ``seed``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    outs: List[List[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(c) for c in prompts[start : start + batch_size]]
        width = max(len(c) for c in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, c in enumerate(chunk):
            input_ids[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
            attn[i, width - len(c) :] = 1
        if do_sample:  # seed torch's global generator from ours so each batch is reproducible
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        outs.extend(_until_eos(row.tolist(), eos_id) for row in out[:, width:])
    model.train(was_training)
    return outs


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
    row_seeds: Optional[Sequence[int]] = None,
) -> List[Sampled]:
    """One sampled completion per prompt, seeded as :func:`generate_ids`, with each token's log-prob under the
    distribution it was drawn from: ``log_softmax`` of ``generate``'s processed scores (the logits after temperature
    and top-p), so at temperature 1 and top-p 1 they are the policy's own log-probs of the sampled tokens.

    ``row_seeds`` (one per prompt) instead gives every row a generator of its own (:class:`_RowSampler`): a completion
    then depends on its prompt, its seed and the weights only, not on the rows it is batched with (so processes that
    share out the prompts draw what one process would)."""
    if row_seeds is not None and len(row_seeds) != len(prompts):
        raise ValueError(f"sample_ids: {len(row_seeds)} row seeds for {len(prompts)} prompts")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    outs: List[Sampled] = []
    for start in range(0, len(prompts), batch_size):
        input_ids, attn, width = _left_padded(prompts[start : start + batch_size], pad)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        rows = None if row_seeds is None else _RowSampler(row_seeds[start : start + batch_size], temperature, top_p)
        with autocast():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attn.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature if rows is None else 1.0,  # the row sampler warps, then draws
                top_p=top_p if rows is None else 1.0,
                top_k=0,
                pad_token_id=pad,
                eos_token_id=eos_id,
                output_scores=True,
                return_dict_in_generate=True,
                **({} if rows is None else {"logits_processor": [rows]}),
            )
        new = out.sequences[:, width:]
        if rows is not None:
            token_logps = torch.stack(rows.logps, dim=1)
        else:
            scores = torch.stack([s.float() for s in out.scores], dim=1).log_softmax(-1)  # [B, new, V]
            token_logps = scores.gather(-1, new[:, : scores.shape[1], None]).squeeze(-1)
        for row, lp in zip(new.tolist(), token_logps.tolist()):
            ids = _until_eos(row, eos_id)
            ended = eos_id is not None and eos_id in row
            outs.append(Sampled(ids, lp[: len(ids) + int(ended)], ended))
    model.train(was_training)
    return outs


class _RowSampler:
    """A logits processor that draws each row's next token itself, from the row's own generator (inverse CDF of the
    distribution after temperature and top-p, one uniform per row and token), and leaves ``generate`` only that token
    (every other score -inf); ``logps`` collects the drawn tokens' log-probs under that distribution, step by step."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        warp = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        self.warp = LogitsProcessorList(warp + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []))
        self.logps: List[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = self.warp(input_ids, scores.float()).log_softmax(-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.gens]).to(scores.device)
        cdf = logp.double().exp().cumsum(-1)
        token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(cdf.shape[-1] - 1)
        self.logps.append(logp.gather(-1, token).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


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
