"""From ``cfg.data`` to tokenised train and eval sets (files or a built-in task)."""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import DataConfig
from ..data.types import DataError, SkipCounter


def task_rows(data: DataConfig, mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Rows of a built-in task: (train, eval). Eval problems never share a prompt with train.

    ``tokenizer`` (optional) lets a task check or pick tokenizer-dependent settings (the paraphrase labels)."""
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
    if data.task == "sentiment":
        return _sentiment_rows(dict(data.task_args), mode, seed)
    if data.task == "paraphrase":
        return _paraphrase_rows(dict(data.task_args), mode, seed, tokenizer)
    if data.task == "sonnets":
        return _sonnet_rows(dict(data.task_args), mode, seed)
    if data.task == "pretrain-text":
        return _pretrain_text_rows(dict(data.task_args), mode)
    raise DataError(f"unknown built-in task '{data.task}'; valid: {', '.join(TASKS)}")


TASKS = ("arithmetic", "imdb-cad", "sentiment", "paraphrase", "sonnets", "pretrain-text")


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


def _sentiment_rows(args: Dict[str, Any], mode: str, seed: int) -> Tuple[List[dict], List[dict]]:
    """SFT rows of IMDb reviews (prompt = the first ``prefix_words`` words, completion = the rest cut to
    ``max_chars``). ``path`` = the imdb-cad-sentiment folder (train from orig/train.tsv, eval from orig/dev.tsv)
    or a Hugging Face dataset name such as ``imdb`` (train split, eval from the test split). Only for SFT: the
    preference tiers need a model, see :func:`dpolab.data.tasks.sentiment.build_preference_tiers`."""
    from pathlib import Path

    from ..data.tasks import sentiment as S

    valid = ("path", "n_train", "n_eval", "prefix_words", "max_chars", "seed")
    extra = sorted(set(args) - set(valid))
    if extra:
        raise DataError(f"unknown data.task_args {extra} for task 'sentiment'; valid: {', '.join(valid)}")
    if mode != "sft":
        raise DataError("task 'sentiment' serves SFT only (train.mode=sft); build the preference tiers with "
                        "dpolab.data.tasks.sentiment.build_preference_tiers and train on the JSONL (data.train=...)")
    if "path" not in args:
        raise DataError("task 'sentiment' needs data.task_args.path: the imdb-cad-sentiment folder (e.g. ../shared/data/imdb-cad-sentiment) or 'imdb'")
    n_train, n_eval = args.get("n_train"), int(args.get("n_eval", 64))
    knobs = dict(max_chars=int(args.get("max_chars", S.SFT_MAX_CHARS)), prefix_words=int(args.get("prefix_words", S.PREFIX_WORDS)))
    root = Path(str(args["path"])).expanduser()
    if root.is_dir() and (root / "orig").is_dir():
        files = S.local_files(root)
        for split in ("train", "dev"):
            if not files[split].exists():
                raise DataError("file not found (expected the imdb-cad-sentiment folder layout orig/{train,dev}.tsv)", source=str(files[split]))
        train_src, eval_src = (str(files["train"]), None), (str(files["dev"]), None)
    else:
        train_src, eval_src = (str(args["path"]), "train"), (str(args["path"]), "test")
    data_seed = int(args.get("seed", seed))

    def subset(rows: List[Any], n: Optional[int]) -> List[Any]:  # seeded, in file order: the files are sorted by label
        if n is None or int(n) >= len(rows):
            return rows
        return [rows[i] for i in sorted(random.Random(data_seed).sample(range(len(rows)), int(n)))]

    train = subset(S.load_reviews(train_src[0], split=train_src[1]), n_train)
    evals = subset(S.load_reviews(eval_src[0], split=eval_src[1]), n_eval)
    return S.sft_rows(train, **knobs), S.sft_rows(evals, **knobs)


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


def _check_args(task: str, args: Dict[str, Any], valid: Tuple[str, ...]) -> None:
    extra = sorted(set(args) - set(valid))
    if extra:
        raise DataError(f"unknown data.task_args {extra} for task '{task}'; valid: {', '.join(valid)}")
    if "path" not in args and task != "paraphrase":
        raise DataError(f"task '{task}' needs data.task_args.path")


def _paraphrase_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any) -> Tuple[List[dict], List[dict]]:
    """Quora Question Pairs (:mod:`dpolab.data.tasks.paraphrase`): ``path`` = the TSV (default
    ../shared/data/quora-paraphrase/quora-dev.csv) or ``glue/qqp`` (hub; ``hub_split``); a seeded grouped
    split (``dev``, ``test``: fractions or counts; ``group``: pair | question); eval from ``eval_split``
    (dev | test); ``labels`` (auto or [yes, no]) and ``answer_prefix`` are checked against the tokenizer."""
    from ..data.tasks import paraphrase as P

    valid = ("path", "hub_split", "seed", "dev", "test", "group", "n_train", "n_eval", "eval_split", "labels", "answer_prefix")
    _check_args("paraphrase", args, valid)
    path = str(args.get("path", "../shared/data/quora-paraphrase/quora-dev.csv"))
    data_seed = int(args.get("seed", seed))
    eval_split = args.get("eval_split", "dev")
    if eval_split not in ("dev", "test"):
        raise DataError(f"data.task_args.eval_split must be dev or test, got {eval_split!r}")
    labels, prefix = args.get("labels", "auto"), args.get("answer_prefix")
    if tokenizer is not None:
        labels, prefix = P.resolve_labels(tokenizer, labels, prefix)
    elif labels == "auto":
        labels, prefix = P.DEFAULT_LABELS, prefix or ""
    loaded = P.load_pairs(path, split=str(args.get("hub_split", "train")))  # logs the malformed rows and the count
    splits = P.split_pairs(loaded.pairs, seed=data_seed, dev=args.get("dev", 0.1), test=args.get("test", 0.1),
                           group=args.get("group", "pair"))
    n_train, n_eval = args.get("n_train"), args.get("n_eval", 512)
    train_p, eval_p = splits["train"][: n_train or None], splits[eval_split][: n_eval or None]
    make = P.sft_rows if mode == "sft" else P.preference_rows
    return (make(train_p, labels=labels, answer_prefix=prefix or ""), make(eval_p, labels=labels, answer_prefix=prefix or ""))


def _sonnet_rows(args: Dict[str, Any], mode: str, seed: int) -> Tuple[List[dict], List[dict]]:
    """Sonnet continuation (:mod:`dpolab.data.tasks.sonnets`): ``path`` = the shakespeare-sonnets folder
    (train sonnets.txt, eval sonnets_held_out_dev.txt + TRUE_sonnets_held_out_dev.txt); preference mode uses
    the model-free construction ``rejected`` = shuffle (lines of the true continuation shuffled, default) or
    other (another sonnet's continuation); sampled rejected responses need a model:
    :func:`dpolab.data.tasks.sonnets.sampled_rejected_rows`."""
    from pathlib import Path

    from ..data.tasks import sonnets as S

    _check_args("sonnets", args, ("path", "n_prompt_lines", "rejected", "n_train", "n_eval", "seed"))
    root = Path(str(args["path"])).expanduser()
    k = int(args.get("n_prompt_lines", S.N_PROMPT_LINES))
    train = S.sft_rows(S.parse_sonnets(root / "sonnets.txt"), n_prompt_lines=k)
    evals = S.dev_rows(root / "sonnets_held_out_dev.txt", root / "TRUE_sonnets_held_out_dev.txt", n_prompt_lines=k)
    train, evals = train[: args.get("n_train") or None], evals[: args.get("n_eval") or None]
    if mode == "sft":
        return train, evals
    kind, data_seed = args.get("rejected", "shuffle"), int(args.get("seed", seed))
    return S.model_free_rejected_rows(train, kind, seed=data_seed), S.model_free_rejected_rows(evals, kind, seed=data_seed + 1)


def _pretrain_text_rows(args: Dict[str, Any], mode: str) -> Tuple[List[dict], List[dict]]:
    """Language-model pretraining windows of a text file (:mod:`dpolab.data.tasks.pretrain`); SFT mode only."""
    from ..data.tasks import pretrain as T

    _check_args("pretrain-text", args, ("path", "chunk_chars", "n_train", "n_eval"))
    if mode != "sft":
        raise DataError("task 'pretrain-text' is plain language modelling: use train.mode=sft")
    n_train = args.get("n_train")
    return T.pretrain_rows(str(args["path"]), chunk_chars=int(args.get("chunk_chars", T.CHUNK_CHARS)),
                           n_train=int(n_train) if n_train else None, n_eval=int(args.get("n_eval", 64)))
