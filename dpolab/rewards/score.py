"""Score a preference dataset with a trained reward model: ``dpolab rm score``.

Every row of the input is written to the output, in the input's order and with all its columns, plus
``reward_chosen``, ``reward_rejected`` and ``rm_margin = reward_chosen - reward_rejected`` (raw reward-model logits,
what MADPO's ``rm_margin`` expects). Rows that cannot be scored (malformed, identical or empty responses, empty
after truncation) keep ``null`` in the three columns and are counted and reported. Scoring is in eval mode without
dropout, under ``torch.no_grad``, in batches of similar length; the same model, data and batch size give the same
numbers on every run.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch

from ..atomic import atomic_path
from ..config import ConfigError
from ..data.types import DataError, SkipCounter
from ..models.device import describe, inference_autocast, resolve_bf16, resolve_device, set_threads, uses_bf16
from ..progress import pair_bar

COLUMNS = ("reward_chosen", "reward_rejected", "rm_margin")
OUT_SUFFIXES = (".jsonl", ".parquet")
MAX_LOGGED = 3


def score_texts(model, tokenizer, texts: List[tuple], device, batch_size: int = 16) -> List[float]:
    """The reward of each (prompt, response) as ``dpolab rm score`` scores a response: the reward model's own tokenizer
    on prompt + response (the last 1023 tokens), its BOS first, the last token's score; no grad."""
    from .model import sequence_rewards

    rewards: List[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for start in range(0, len(texts), batch_size):
        rows = [
            bos + tokenizer(prompt + response, add_special_tokens=False)["input_ids"][-1023:]
            for prompt, response in texts[start : start + batch_size]
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad():
            rewards += sequence_rewards(model, ids, mask).cpu().tolist()
    return rewards


def write_rows(rows: List[dict], out: os.PathLike) -> None:
    """Write rows as JSONL or Parquet (by extension), atomically (:func:`dpolab.atomic.atomic_path`)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise DataError(
            f"unsupported output type '{suffix}' (expected one of {', '.join(OUT_SUFFIXES)})", source=str(out)
        )
    with atomic_path(out) as tmp:
        if suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)


def score_pairs(
    model, pairs: list, pad_id: int, *, batch_size: int = 16, progress: bool = True, autocast: Callable = nullcontext
) -> List[tuple]:
    """(reward_chosen, reward_rejected) for each tokenised pair, in order; batches are formed by length, on the
    model's device, under ``autocast``. ``progress``: a bar on stderr counting pairs (:func:`dpolab.progress.pair_bar`).
    """
    from ..data.collate import collate_preference, pair_length
    from .model import sequence_rewards

    order = sorted(range(len(pairs)), key=lambda i: (-pair_length(pairs[i]), i))
    out: List[Optional[tuple]] = [None] * len(pairs)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), pair_bar(len(pairs), "rm score", enabled=progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = collate_preference([pairs[i] for i in idx], pad_id)
            with autocast():
                r = sequence_rewards(model, batch.input_ids.to(device), batch.attention_mask.to(device))
            r = r.cpu().tolist()
            n = len(idx)
            for j, i in enumerate(idx):
                out[i] = (r[j], r[n + j])
            bar.update(n)
    model.train(was_training)
    return out  # type: ignore[return-value]


def score_file(
    model: str,
    data: str,
    out: str,
    *,
    batch_size: int = 16,
    max_length: int = 1024,
    max_prompt_length: Optional[int] = None,
    columns: Optional[Mapping[str, str]] = None,
    tokenizer: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    device: str = "auto",
    bf16: Union[bool, str, None] = None,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Add ``reward_chosen``, ``reward_rejected`` and ``rm_margin`` to every row of ``data`` and write ``out``.

    ``model`` is a reward model folder (``dpolab rm train``'s ``final/``, or any HF sequence-classification model with
    one label), run on ``device`` (:func:`dpolab.models.device.resolve_device`). ``bf16``: true, false or auto, as
    ``train.bf16`` (:func:`dpolab.models.device.resolve_bf16`); None: bf16 autocast on a GPU that supports it, else
    float32. ``threads``: torch's threads, as ``train.threads`` (None: torch's default). Returns a summary: rows,
    scored, skipped (by reason), pairwise accuracy and margin statistics."""
    from ..data.formats import to_preference_row
    from ..data.sources import iter_records, source_name
    from ..data.tokenize import tokenize_preference
    from .model import load_trained_reward_model

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if Path(out).suffix.lower() not in OUT_SUFFIXES:
        raise DataError(
            f"unsupported output type '{Path(out).suffix}' (expected one of {', '.join(OUT_SUFFIXES)})", source=str(out)
        )
    dev = resolve_device(device)
    use_bf16, why = resolve_bf16(bf16, dev) if bf16 is not None else (uses_bf16(dev), None)
    intra, _, source, _ = set_threads(threads)
    rm, tok = load_trained_reward_model(model, tokenizer=tokenizer)
    rm.to(dev)
    log(f"device: {describe(dev, use_bf16)}" + (f" ({why})" if why else "") + f"; torch threads {intra} ({source})")
    name = source_name(data)
    rows: List[dict] = []
    pairs, where = [], []  # tokenised pairs and the index of their row
    skips, logged = SkipCounter(), 0
    for row, rec in iter_records(data):
        try:
            if isinstance(rec, DataError):
                raise rec
            pair = to_preference_row(rec, source=name, row=row, columns=columns, skips=skips)
            tp = (
                tokenize_preference(pair, tok, max_length=max_length, max_prompt_length=max_prompt_length, skips=skips)
                if pair is not None
                else None
            )
        except (
            DataError,
            ValueError,
            TypeError,
        ) as e:  # ValueError/TypeError: the tokenizer or chat template refused it
            field = getattr(e, "field", None)
            skips.add(f"invalid row (field '{field}')" if field else "invalid row")
            if logged < MAX_LOGGED:
                log(f"not scored: {str(e).splitlines()[0]}")
                logged += 1
            tp = None
        if isinstance(rec, DataError):
            rec = {}  # an unreadable line: kept as an empty row so rows stay aligned with the input
        rows.append(dict(rec))
        if tp is not None:
            pairs.append(tp)
            where.append(len(rows) - 1)
    if not rows:
        raise DataError("no rows to score", source=name)
    clobbered = [c for c in COLUMNS if c in rows[0]]
    if clobbered:
        log(f"{name}: replacing the existing column(s) {clobbered}")
    scores = score_pairs(
        rm,
        pairs,
        tok.pad_token_id,
        batch_size=batch_size,
        progress=progress,
        autocast=inference_autocast(dev, use_bf16),
    )
    for r in rows:
        r.update({c: None for c in COLUMNS})
    for i, (rc, rl) in zip(where, scores):
        rows[i].update(reward_chosen=rc, reward_rejected=rl, rm_margin=rc - rl)
    write_rows(rows, out)
    margins = [rc - rl for rc, rl in scores]
    mean = sum(margins) / len(margins) if margins else float("nan")
    std = math.sqrt(sum((m - mean) ** 2 for m in margins) / len(margins)) if margins else float("nan")
    summary = {
        "rows": len(rows),
        "scored": len(pairs),
        "skipped": skips.total,
        "skip_reasons": dict(skips.counts),
        "pairwise_accuracy": (sum(m > 0 for m in margins) / len(margins)) if margins else float("nan"),
        "margin_mean": mean,
        "margin_std": std,
        "out": str(out),
    }
    log(
        f"{name}: scored {len(pairs)} of {len(rows)} rows -> {out}; "
        + (skips.summary() + " (their reward columns are null)" if skips.total else "no rows skipped")
    )
    return summary
