"""Batched, seeded generation (greedy or temperature / top-p sampling) from prompts given as text or token ids.

The token-level primitive, :func:`generate_ids`, lives in :mod:`dpolab.models.generation` (the diagnostics use it
too); :func:`generate` adds tokenisation and decoding."""

from __future__ import annotations

from typing import List, Sequence, Union

from ..models.generation import generate_ids

__all__ = ["generate", "generate_ids"]


def generate(
    model,
    tokenizer,
    prompts: Sequence[Union[str, List[int]]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    add_bos: bool = True,
) -> List[str]:
    """Decoded continuations of ``prompts`` (special tokens removed, stopped at EOS).

    A prompt given as text is tokenised the way training tokenises it (BOS first when the tokenizer has one
    and ``add_bos``).
    """
    ids = generate_ids(
        model,
        [_ids(tokenizer, p, add_bos) for p in prompts],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(o, skip_special_tokens=True) for o in ids]


def _ids(tokenizer, prompt, add_bos: bool) -> List[int]:
    if not isinstance(prompt, str):
        return list(prompt)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if add_bos and tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids
