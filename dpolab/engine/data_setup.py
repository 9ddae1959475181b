"""From ``cfg.data`` to tokenised train and eval sets (files or a built-in task)."""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import DataConfig
from ..data.types import DataError, SkipCounter


def task_rows(data: DataConfig, mode: str, seed: int) -> Tuple[List[dict], List[dict]]:
    """Rows of a built-in task: (train, eval). Eval problems never share a prompt with train."""
    if data.task == "arithmetic":
        from ..data.tasks import arithmetic as A

        args = dict(data.task_args)
        n_train = int(args.pop("n_train", 512))
        n_eval = int(args.pop("n_eval", 64))
        seed = int(args.pop("seed", seed))  # the problems' own seed (default: train.seed), so studies can fix the data
        miss = args.pop("miss", "mixed")
        label_noise = float(args.pop("label_noise", 0.0))
        problem_args = {k: args.pop(k) for k in list(args) if k in ("n_terms", "max_value")}
        if args:
            raise DataError(f"unknown data.task_args {sorted(args)} for task 'arithmetic'; valid: n_train, n_eval, miss, label_noise, n_terms, max_value, seed")
        want = n_train + n_eval
        problems = A.make_problems(want * 4, seed=seed, **problem_args)
        unique = list({p.prompt: p for p in reversed(problems)}.values())[::-1]  # first occurrence, in order
        if len(unique) < want:
            raise DataError(f"task 'arithmetic' has only {len(unique)} distinct problems for these settings "
                            f"({problem_args or 'defaults'}), fewer than n_train + n_eval = {want}; raise max_value or n_terms")
        eval_p, train_p = unique[:n_eval], unique[n_eval:want]  # evaluation prompts never appear in training
        if mode == "sft":
            return A.sft_rows(train_p), A.sft_rows(eval_p)
        return (A.preference_rows(train_p, miss=miss, label_noise=label_noise, seed=seed),
                A.preference_rows(eval_p, miss=miss, label_noise=0.0, seed=seed + 1))
    if data.task == "imdb-cad":
        return _imdb_cad_rows(dict(data.task_args), mode, seed)
    raise DataError(f"unknown built-in task '{data.task}'; valid: {', '.join(TASKS)}")


TASKS = ("arithmetic", "imdb-cad")


def _imdb_cad_rows(args: Dict[str, Any], mode: str, seed: int) -> Tuple[List[dict], List[dict]]:
    """IMDb counterfactual pairs: ``path`` = the imdb-cad-sentiment folder (train from paired/train_paired.tsv,
    eval from paired/dev_paired.tsv); ``kind`` = low (minimal human edits) or high (another review's span)."""
    from pathlib import Path

    from ..data.tasks import imdb_cad as C

    valid = ("path", "kind", "n_train", "n_eval", "context_chars", "response_chars", "max_chars", "seed")
    extra = sorted(set(args) - set(valid))
    if extra:
        raise DataError(f"unknown data.task_args {extra} for task 'imdb-cad'; valid: {', '.join(valid)}")
    if "path" not in args:
        raise DataError("task 'imdb-cad' needs data.task_args.path: the imdb-cad-sentiment folder (e.g. ../shared/data/imdb-cad-sentiment)")
    root = Path(args["path"]).expanduser()
    files = {split: root / "paired" / f"{split}_paired.tsv" for split in ("train", "dev")}
    for f in files.values():
        if not f.exists():
            raise DataError("file not found (expected the imdb-cad-sentiment folder layout paired/{train,dev}_paired.tsv)", source=str(f))
    quiet = lambda s: None  # noqa: E731 - the loaders below report counts themselves
    n_train, n_eval = args.get("n_train"), int(args.get("n_eval", 64))
    data_seed = int(args.get("seed", seed))
    if mode == "sft":
        max_chars = int(args.get("max_chars", C.SFT_MAX_CHARS))
        return (C.sft_rows(str(files["train"]), max_chars=max_chars, chunks=True, log=quiet)[: n_train or None],
                C.sft_rows(str(files["dev"]), max_chars=max_chars, log=quiet)[:n_eval])
    kind = args.get("kind", "low")
    if kind not in ("low", "high"):
        raise DataError(f"data.task_args.kind must be low or high, got {kind!r}")
    make = C.minimal_edit_rows if kind == "low" else C.high_distance_rows
    knobs = {k: int(args[k]) for k in ("context_chars", "response_chars") if k in args}
    train = make(str(files["train"]), max_rows=n_train, seed=data_seed, log=quiet, **knobs)
    evals = make(str(files["dev"]), max_rows=n_eval, seed=data_seed, log=quiet, **knobs)
    return train, evals


def prepare_data(data: DataConfig, tokenizer, mode: str, seed: int, log: Callable[[str], None] = print):
    """Tokenised (train, eval) lists for ``mode`` ('sft' or 'preference')."""
    from ..data.dataset import load_preference_data, load_sft_data

    if mode == "sft" and data.sft_from_pairs:  # SFT on the responses of preference data (extended SFT: both)
        train, evals = prepare_data(data, tokenizer, "preference", seed, log)
        return pairs_to_sft(train, data.sft_from_pairs), pairs_to_sft(evals, "chosen")
    loader = load_sft_data if mode == "sft" else load_preference_data
    common: Dict[str, Any] = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                                  truncation_mode=data.truncation_mode, on_error=data.on_error, log=log)
    if mode != "sft":
        common["extras"] = tuple(data.extras)
    if data.task:
        if data.train:
            raise DataError("set either data.task or data.train, not both")
        train_rows, eval_rows = task_rows(data, mode, seed)
        train, _ = loader(train_rows, tokenizer, limit=data.limit, **common)
        evals, _ = loader(eval_rows, tokenizer, **common)
        return train, evals
    if not data.train:
        raise DataError("no training data: set data.train (a file, folder or dataset name) or data.task (e.g. arithmetic)")
    train, _ = loader(data.train, tokenizer, columns=data.columns or None, limit=data.limit, **common)
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
    else:
        evals = []
    return train, evals


def pairs_to_sft(pairs, which: str):
    """SFT rows from tokenised pairs: the chosen responses, or ('both') chosen and rejected, each after its prompt."""
    from ..data.types import TokenizedSFT

    rows = [TokenizedSFT(p.prompt_ids, p.chosen_ids, dict(p.meta)) for p in pairs]
    if which == "both":
        rows += [TokenizedSFT(p.prompt_ids, p.rejected_ids, dict(p.meta)) for p in pairs]
    return rows
