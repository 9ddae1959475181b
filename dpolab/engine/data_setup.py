"""From ``cfg.data`` to tokenised train and eval sets (files, or a built-in task from :mod:`dpolab.tasks`)."""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import DataConfig
from ..data.types import DataError
from ..tasks.registry import rows_for


def task_rows(data: DataConfig, mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Rows of a built-in task (:mod:`dpolab.tasks`): (train, eval). Eval problems never share a prompt with train.

    ``tokenizer`` (optional) lets a task check or pick tokenizer-dependent settings (the paraphrase labels)."""
    return rows_for(data.task, data.task_args, mode, seed, tokenizer)


def prepare_data(data: DataConfig, tokenizer, mode: str, seed: int, log: Callable[[str], None] = print,
                 stats: Optional[Dict[str, Any]] = None):
    """Tokenised (train, eval) lists for ``mode`` ('sft', 'preference' or 'unpaired').

    ``stats`` (a dict, optional) gets ``{"truncation": {"train": ..., "eval": ...}}``: what truncation cut in each split
    (:func:`dpolab.data.truncation_report.truncation_stats`), for the run summary."""
    from dataclasses import asdict

    from ..data.token_cache import cached_tokenisation  # a second run with the same settings skips tokenisation

    train, evals = cached_tokenisation(asdict(data), tokenizer, mode, seed, lambda lg: _prepare(data, tokenizer, mode, seed, lg),
                                       log=log, enabled=data.cache, cache_dir=data.cache_dir)
    if stats is not None:
        from ..data.truncation_report import truncation_stats

        stats["truncation"] = {"train": truncation_stats(train), "eval": truncation_stats(evals)}
    return train, evals


def _prepare(data: DataConfig, tokenizer, mode: str, seed: int, log: Callable[[str], None]):
    from ..data.dataset import load_preference_data, load_sft_data, load_unpaired_data

    if mode == "sft" and data.sft_from_pairs:  # SFT on the responses of preference data (extended SFT: both)
        train, evals = _prepare(data, tokenizer, "preference", seed, log)
        return pairs_to_sft(train, data.sft_from_pairs), pairs_to_sft(evals, "chosen")
    if mode == "unpaired" and data.unpaired_from_pairs:  # KTO on preference data: each pair gives two rows
        train, evals = _prepare(data, tokenizer, "preference", seed, log)
        return pairs_to_unpaired(train), pairs_to_unpaired(evals)
    loader = {"sft": load_sft_data, "unpaired": load_unpaired_data}.get(mode, load_preference_data)
    common: Dict[str, Any] = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                                  truncation_mode=data.truncation_mode, on_error=data.on_error, log=log)
    if mode not in ("sft", "unpaired"):
        common.update(extras=tuple(data.extras), data_format=data.format)
    elif data.format != "auto":
        raise DataError(f"data.format={data.format} reads preference pairs; for train.mode={mode} on such data set "
                        + ("data.sft_from_pairs" if mode == "sft" else "data.unpaired_from_pairs=true"))
    if data.task:
        if data.train:
            raise DataError("set either data.task or data.train, not both")
        if mode == "unpaired":
            raise DataError(f"built-in task '{data.task}' gives preference pairs; set data.unpaired_from_pairs=true to "
                            f"split each pair into a desirable and an undesirable row")
        train_rows, eval_rows = task_rows(data, mode, seed, tokenizer=tokenizer)
        train, _ = loader(train_rows, tokenizer, limit=data.limit, **common)
        evals, _ = loader(eval_rows, tokenizer, **common)
        return train, evals
    if not data.train:
        raise DataError("no training data: set data.train (a file, folder or dataset name) or data.task (e.g. arithmetic)")
    train, _ = loader(data.train, tokenizer, columns=data.columns or None, limit=data.limit, split=data.split, **common)
    if not train:
        raise DataError("no usable training rows", source=data.train)
    if data.eval:
        evals, _ = loader(data.eval, tokenizer, columns=data.columns or None, **common)
    elif data.eval_fraction > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(len(train) * data.eval_fraction))
        held = set(order[:n_eval])
        evals = [train[i] for i in sorted(held)]
        train = [t for i, t in enumerate(train) if i not in held]
        log(f"held out {len(evals)} of {len(train) + len(evals)} training rows for evaluation (data.eval_fraction={data.eval_fraction})")
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
        log(f"evaluation scores {max_examples} of {len(evals)} eval examples (eval.max_examples={max_examples}; null = all)")
        return evals[:max_examples]
    log(f"evaluation scores all {len(evals)} eval examples")
    return evals


def pairs_to_sft(pairs, which: str):
    """SFT rows from tokenised pairs: the chosen responses, or ('both') chosen and rejected, each after its prompt."""
    from ..data.types import TokenizedSFT

    rows = [TokenizedSFT(p.prompt_ids, p.chosen_ids, dict(p.meta)) for p in pairs]
    if which == "both":
        rows += [TokenizedSFT(p.prompt_ids, p.rejected_ids, dict(p.meta)) for p in pairs]
    return rows


def pairs_to_unpaired(pairs):
    """Unpaired (KTO) rows from tokenised pairs: each pair's chosen response (label True), then its rejected one
    (label False), after the same prompt."""
    from ..data.types import TokenizedUnpaired

    return [TokenizedUnpaired(p.prompt_ids, ids, label, dict(p.meta))
            for p in pairs for ids, label in ((p.chosen_ids, True), (p.rejected_ids, False))]
