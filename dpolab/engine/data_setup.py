"""From ``cfg.data`` to tokenised train and eval sets (files, or a built-in task from :mod:`dpolab.tasks`), of the
data kind an objective declares (:mod:`dpolab.engine.data_kinds`): this file names no objective and no kind."""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import DataConfig
from ..data.types import DataError
from ..tasks.registry import rows_for
from .data_kinds import DataKind, get_kind


def task_rows(data: DataConfig, mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Rows of a built-in task (:mod:`dpolab.tasks`): (train, eval). Eval problems never share a prompt with train.

    ``tokenizer`` (optional) lets a task check or pick tokenizer-dependent settings (the paraphrase labels)."""
    return rows_for(data.task, data.task_args, mode, seed, tokenizer)


def prepare_data(
    data: DataConfig,
    tokenizer,
    kind,
    seed: int,
    log: Callable[[str], None] = print,
    stats: Optional[Dict[str, Any]] = None,
):
    """Tokenised (train, eval) lists of ``kind`` (a :class:`~dpolab.engine.data_kinds.DataKind` or a registered
    kind's name: 'preference', 'sft', 'unpaired', ...).

    ``stats`` (a dict, optional) gets ``{"truncation": {"train": ..., "eval": ...}}``: what truncation cut in each split
    (:func:`dpolab.data.truncation_report.truncation_stats`), for the run summary."""
    from dataclasses import asdict

    from ..data.token_cache import cached_tokenisation  # a second run with the same settings skips tokenisation

    kind = get_kind(kind)
    train, evals = cached_tokenisation(
        asdict(data),
        tokenizer,
        kind.name,
        seed,
        lambda lg: _prepare(data, tokenizer, kind, seed, lg),
        log=log,
        enabled=data.cache,
        cache_dir=data.cache_dir,
    )
    if stats is not None:
        from ..data.truncation_report import truncation_stats

        stats["truncation"] = {"train": truncation_stats(train), "eval": truncation_stats(evals)}
    return train, evals


def _prepare(data: DataConfig, tokenizer, kind: DataKind, seed: int, log: Callable[[str], None]):
    source = kind.derived_from(data)
    if source is not None:  # e.g. SFT on the responses of preference pairs: the kind converts the other kind's rows
        train, evals = _prepare(data, tokenizer, source, seed, log)
        return kind.convert(train, data, "train"), kind.convert(evals, data, "eval")
    common: Dict[str, Any] = dict(
        max_length=data.max_length,
        max_prompt_length=data.max_prompt_length,
        truncation_mode=data.truncation_mode,
        on_error=data.on_error,
        log=log,
    )
    common.update(kind.options(data))
    if data.task:
        if data.train:
            raise DataError("set either data.task or data.train, not both")
        train_rows, eval_rows = kind.task_rows(data, seed, tokenizer=tokenizer)
        train, _ = kind.load(train_rows, tokenizer, limit=data.limit, **common)
        evals, _ = kind.load(eval_rows, tokenizer, **common)
        return train, evals
    if not data.train:
        raise DataError(
            "no training data: set data.train (a file, folder or dataset name) or data.task (e.g. arithmetic)"
        )
    train, _ = kind.load(
        data.train, tokenizer, columns=data.columns or None, limit=data.limit, split=data.split, **common
    )
    if not train:
        raise DataError("no usable training rows", source=data.train)
    if data.eval:
        evals, _ = kind.load(data.eval, tokenizer, columns=data.columns or None, **common)
    elif data.eval_fraction > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(len(train) * data.eval_fraction))
        held = set(order[:n_eval])
        evals = [train[i] for i in sorted(held)]
        train = [t for i, t in enumerate(train) if i not in held]
        log(
            f"held out {len(evals)} of {len(train) + len(evals)} training rows for evaluation "
            f"(data.eval_fraction={data.eval_fraction})"
        )
        from ..data.truncation_report import truncation_line, truncation_stats

        for split, items in (("train", train), ("eval", evals)):
            log(f"{split} split: {truncation_line(truncation_stats(items))}")
    else:
        evals = []
    return train, evals


def cap_eval_data(evals: Sequence, max_examples: Optional[int], log: Callable[[str], None] = print) -> list:
    """The first ``max_examples`` eval examples (all when None), saying how many of how many every evaluation scores."""
    evals = list(evals or [])
    if not evals:
        return evals
    if max_examples is not None and max_examples < len(evals):
        log(
            f"evaluation scores {max_examples} of {len(evals)} eval examples (eval.max_examples={max_examples}; null "
            f"= all)"
        )
        return evals[:max_examples]
    log(f"evaluation scores all {len(evals)} eval examples")
    return evals
