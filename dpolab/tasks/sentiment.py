"""Positive-sentiment continuation of IMDb review prefixes (the MADPO paper's task, study S2).

Pipeline (what the study calls, in order):

1. :func:`load_reviews` - reviews from a local file (the IMDb CAD ``orig/{train,dev,test}.tsv`` files,
   columns ``Sentiment<TAB>Text``) or, for users online, the Hugging Face ``imdb`` dataset by name (columns
   ``text`` and ``label``, 0 = negative, 1 = positive; ``split`` train / test). Texts go through
   :func:`dpolab.tasks.imdb_cad.clean_text`.
2. :func:`prompt_rows` - the prompt is the review's first ``prefix_words`` words (default 8, a middle ground
   between the DPO paper's 2-8 GPT-2 tokens and the MADPO code's 20 Gemma tokens: long enough to set a topic and
   often a sentiment, short enough that the continuation decides the reward); ``review`` is the human
   continuation (the rest of the review, starting with its separating whitespace, cut at a word boundary to
   ``review_chars``, so it can stand in for a sampled response of similar length).
3. :func:`sft_rows` - SFT on reviews: ``{prompt, completion}`` with the same prefix as prompt.
4. :func:`sample_pairs` - ``n`` sampled continuations per prompt from the SFT model (temperature / top-p, seeded).
5. An oracle scores them (:mod:`dpolab.rewards.oracles`, VADER by default).
6. :func:`label_pairs` - the label is drawn from a Bradley-Terry model of the oracle scores:
   ``P(a preferred over b) = sigmoid((s_a - s_b) / T)`` with a seeded random source (the MADPO code does the
   same thing as Gumbel noise added to each score, which gives exactly this logistic law, with T = 1 on its
   classifier's scores). **T = 0.25 by default** (:data:`BT_TEMPERATURE`): VADER compound scores lie in
   [-1, 1], so a gap of 0.1 gives P = 0.60, 0.25 -> 0.73, 0.5 -> 0.88, 1.0 -> 0.98 - sharp for clearly
   different responses, noisy for close ones. (T = 1 would cap P at sigmoid(2) = 0.88 even for opposite
   extremes: almost random labels.)
7. :func:`make_tiers` - the three data-quality tiers of the paper (STUDIES.md S2), from the High rows:

   - **High**: every pair is the two SFT samples (the rows from step 6).
   - **Medium**: a seeded random half (``n // 2`` rows) of the pairs is *replaced* by the pair
     (best SFT sample, the original human review continuation); the other half is kept.
   - **Low**: every pair is replaced.

   "Best SFT sample" is the sample with the highest oracle score among the prompt's samples. As in the MADPO
   code (``response_quality_control``: first response = the better sample, second = the human review), the
   replaced pair lists the best sample first, but *the label is still drawn* from the Bradley-Terry model on the
   oracle scores of the two responses: the human review is the chosen one whenever the draw says so (the
   paper's tuple order is not a label). The draw of a replaced pair depends only on (seed, row index), so a
   pair replaced in both Medium and Low has the same label in both. Rows record ``replaced`` and
   ``chosen_source`` / ``rejected_source`` (``sample``, ``sft_best`` or ``human``).

:func:`build_preference_tiers` runs steps 4-7 for a model and writes ``high.jsonl``, ``medium.jsonl`` and
``low.jsonl``; train on them with ``data.train=<dir>/high.jsonl`` (the built-in task
``data.task=sentiment``, :func:`task_rows`, serves only the SFT stage, since the pairs need a model). Every
preference row carries
``prompt, chosen, rejected, oracle_chosen, oracle_rejected, oracle_margin, bt_p, tier, replaced,
chosen_source, rejected_source, id`` (``bt_p`` = the Bradley-Terry probability of the label drawn).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from dpolab.data.sources import Source, read_records, source_name
from dpolab.data.types import DataError
from dpolab.tasks.imdb_cad import _cut_words, clean_text
from dpolab.tasks.registry import Task, register

PREFIX_WORDS = 8
MIN_REST_WORDS = 4
REVIEW_CHARS = 200
SFT_MAX_CHARS = 256
BT_TEMPERATURE = 0.25
TIERS = ("high", "medium", "low")
MEDIUM_FRACTION = 0.5

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Review:
    """One review: ``id`` (``<source>:<row>``), ``sentiment`` ('Positive' / 'Negative') and cleaned ``text``."""

    id: str
    sentiment: str
    text: str


def local_files(root: Union[str, Path]) -> Dict[str, Path]:
    """The IMDb CAD ``orig/`` files under ``root`` (the imdb-cad-sentiment folder): split -> path."""
    return {split: Path(root).expanduser() / "orig" / f"{split}.tsv" for split in ("train", "dev", "test")}


def load_reviews(source: Source, *, split: Optional[str] = None, max_reviews: Optional[int] = None) -> List[Review]:
    """Reviews from a ``Sentiment<TAB>Text`` file (IMDb CAD ``orig/*.tsv``), the Hugging Face ``imdb`` dataset
    (``text``/``label``; pass ``split``) or an in-memory list of such records, in file order; empty texts are
    dropped. A missing file or missing columns raise :class:`DataError`."""
    name = source_name(source)
    tag = (
        Path(name).stem
        if isinstance(source, (str, Path)) and Path(str(source)).suffix
        else f"{name}:{split or 'train'}"
    )
    out: List[Review] = []
    for row, rec in read_records(source, split=split):
        if "Text" in rec and "Sentiment" in rec:
            text, label = rec["Text"], str(rec["Sentiment"]).strip().capitalize()
        elif "text" in rec and "label" in rec:
            text, label = rec["text"], {0: "Negative", 1: "Positive"}.get(rec["label"], str(rec["label"]))
        else:
            raise DataError(
                f"expected columns Sentiment, Text (IMDb CAD) or text, label (HF imdb); got {', '.join(map(str, rec))}",
                source=name,
                row=row,
            )
        text = clean_text(str(text or ""))
        if text:
            out.append(Review(f"{tag}:{row}", label, text))
        if max_reviews is not None and len(out) >= max_reviews:
            break
    return out


def split_prefix(text: str, prefix_words: int = PREFIX_WORDS) -> Tuple[str, str]:
    """(the first ``prefix_words`` words of ``text`` as they appear, the rest starting with its whitespace)."""
    if prefix_words < 1:
        raise DataError(f"prefix_words must be >= 1, got {prefix_words}")
    words = list(_WORD.finditer(text))
    if len(words) <= prefix_words:
        return text, ""
    end = words[prefix_words - 1].end()
    return text[:end], text[end:]


def _cut_rest(rest: str, limit: int) -> str:
    """The continuation (with its leading whitespace) cut to about ``limit`` characters at a word boundary."""
    lead = rest[: len(rest) - len(rest.lstrip())]
    return lead + _cut_words(rest.lstrip(), max(1, limit - len(lead)))


def _reviews(reviews: Union[Source, Sequence[Review]]) -> List[Review]:
    if isinstance(reviews, (list, tuple)) and all(isinstance(r, Review) for r in reviews):
        return list(reviews)
    return load_reviews(reviews)


def prompt_rows(
    reviews: Union[Source, Sequence[Review]],
    prefix_words: int = PREFIX_WORDS,
    *,
    review_chars: int = REVIEW_CHARS,
    min_rest_words: int = MIN_REST_WORDS,
    max_rows: Optional[int] = None,
    seed: int = 0,
) -> List[dict]:
    """``{prompt, review, sentiment, id}`` per review with at least ``min_rest_words`` words after the prefix
    (shorter ones are dropped). ``max_rows`` keeps a seeded random subset, in file order."""
    rows = _prefix_rows(reviews, prefix_words, min_rest_words, "review", review_chars)
    if max_rows is not None and max_rows < len(rows):
        keep = sorted(random.Random(f"sentiment-prompts-{seed}").sample(range(len(rows)), max_rows))
        rows = [rows[i] for i in keep]
    return rows


def sft_rows(
    reviews: Union[Source, Sequence[Review]],
    max_chars: int = SFT_MAX_CHARS,
    *,
    prefix_words: int = PREFIX_WORDS,
    min_rest_words: int = 1,
) -> List[dict]:
    """SFT on reviews: ``{prompt, completion, sentiment, id}`` with prompt = the prefix and completion = the rest
    of the review (leading whitespace kept) cut to ``max_chars`` at a word boundary."""
    if max_chars < 1:
        raise DataError(f"max_chars must be a positive integer, got {max_chars!r}")
    return _prefix_rows(reviews, prefix_words, min_rest_words, "completion", max_chars)


def _prefix_rows(reviews, prefix_words: int, min_rest_words: int, rest_field: str, rest_chars: int) -> List[dict]:
    """``{prompt, <rest_field>, sentiment, id}``: the first words as prompt, the rest cut to ``rest_chars``; reviews
    with fewer than ``min_rest_words`` words after the prefix are dropped."""
    rows = []
    for r in _reviews(reviews):
        prompt, rest = split_prefix(r.text, prefix_words)
        if len(_WORD.findall(rest)) >= min_rest_words:
            rows.append(
                {"prompt": prompt, rest_field: _cut_rest(rest, rest_chars), "sentiment": r.sentiment, "id": r.id}
            )
    return rows


def sample_pairs(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 2,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
) -> List[List[str]]:
    """``n`` sampled continuations per prompt (a list of ``n`` strings per prompt), reproducible for ``seed``.
    Each prompt is repeated ``n`` times in one batched, seeded :func:`dpolab.evaluation.generation.generate`."""
    from dpolab.evaluation.generation import generate

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    flat = [p for p in prompts for _ in range(n)]
    outs = generate(
        model,
        tokenizer,
        flat,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    return [outs[i * n : (i + 1) * n] for i in range(len(prompts))]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def bt_probability(s_a: float, s_b: float, temperature: float = BT_TEMPERATURE) -> float:
    """Bradley-Terry probability that the response scored ``s_a`` is preferred: sigmoid((s_a - s_b) / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _sigmoid((float(s_a) - float(s_b)) / temperature)


def _bt_row(base: dict, a: Tuple[str, float, str], b: Tuple[str, float, str], u: float, temperature: float) -> dict:
    """A preference row for responses a, b = (text, oracle score, source) and a uniform draw ``u``."""
    p_a = bt_probability(a[1], b[1], temperature)
    win, lose, p = (a, b, p_a) if u < p_a else (b, a, 1.0 - p_a)
    return dict(
        base,
        chosen=win[0],
        rejected=lose[0],
        oracle_chosen=win[1],
        oracle_rejected=lose[1],
        oracle_margin=win[1] - lose[1],
        bt_p=p,
        chosen_source=win[2],
        rejected_source=lose[2],
    )


def _base(prompt: Union[str, dict], i: int) -> dict:
    if isinstance(prompt, dict):
        base = {k: v for k, v in prompt.items() if k not in ("chosen", "rejected", "completion")}
        base.setdefault("id", str(i))
        return base
    return {"prompt": prompt, "id": str(i)}


def label_pairs(
    prompts: Sequence[Union[str, dict]],
    samples: Sequence[Sequence[str]],
    oracle_scores: Sequence[Sequence[float]],
    *,
    seed: int,
    temperature: float = BT_TEMPERATURE,
) -> List[dict]:
    """High-tier preference rows: for each prompt the first two samples (a, b) with oracle scores (s_a, s_b);
    ``chosen`` is a with probability sigmoid((s_a - s_b) / temperature) (one seeded uniform draw per row, in
    order). ``prompts`` are texts or prompt rows (dicts: their other fields - id, review, sentiment - are kept).
    """
    if not len(prompts) == len(samples) == len(oracle_scores):
        raise ValueError(
            f"prompts, samples and oracle_scores differ in length: {len(prompts)}, {len(samples)}, {len(oracle_scores)}"
        )
    rng = random.Random(f"sentiment-bt-{seed}")
    rows = []
    for i, (prompt, pair, scores) in enumerate(zip(prompts, samples, oracle_scores)):
        if len(pair) < 2 or len(scores) < 2:
            raise ValueError(f"row {i}: need two samples and two scores, got {len(pair)} and {len(scores)}")
        base = dict(_base(prompt, i), tier="high", replaced=False)
        rows.append(
            _bt_row(
                base,
                (pair[0], float(scores[0]), "sample"),
                (pair[1], float(scores[1]), "sample"),
                rng.random(),
                temperature,
            )
        )
    return rows


def make_tiers(
    rows: Sequence[dict],
    best_samples: Optional[Sequence[str]],
    human_reviews: Sequence[str],
    *,
    seed: int = 0,
    oracle: Union[str, Callable] = "vader",
    best_scores: Optional[Sequence[float]] = None,
    human_scores: Optional[Sequence[float]] = None,
    temperature: float = BT_TEMPERATURE,
    medium_fraction: float = MEDIUM_FRACTION,
) -> Dict[str, List[dict]]:
    """The tiers High / Medium / Low from the High rows of :func:`label_pairs` (module docstring).

    ``best_samples[i]`` is the best SFT sample for row i (None: the higher-scored response of the row itself);
    ``human_reviews[i]`` the original human continuation. Scores not given are computed with ``oracle``.
    Medium replaces a seeded random ``int(n * medium_fraction)`` rows, Low all of them; a replaced pair's label
    is a Bradley-Terry draw on (best sample, human review) that is the same in Medium and Low.
    """
    from dpolab.rewards.oracles import get_oracle

    rows = [dict(r) for r in rows]
    n = len(rows)
    if len(human_reviews) != n:
        raise ValueError(f"human_reviews has {len(human_reviews)} entries for {n} rows")
    if best_samples is None:
        pick = [
            (r["chosen"], r["oracle_chosen"])
            if r["oracle_chosen"] >= r["oracle_rejected"]
            else (r["rejected"], r["oracle_rejected"])
            for r in rows
        ]
        best_samples, best_scores = [p[0] for p in pick], [p[1] for p in pick]
    if len(best_samples) != n:
        raise ValueError(f"best_samples has {len(best_samples)} entries for {n} rows")
    score = None
    if best_scores is None or human_scores is None:
        score = get_oracle(oracle)
    best_scores = list(best_scores) if best_scores is not None else score(list(best_samples))
    human_scores = list(human_scores) if human_scores is not None else score(list(human_reviews))
    draws = random.Random(f"sentiment-tiers-bt-{seed}")
    us = [draws.random() for _ in range(n)]
    replaced_rows = []
    for i, r in enumerate(rows):
        base = {
            k: v
            for k, v in r.items()
            if k
            not in (
                "chosen",
                "rejected",
                "oracle_chosen",
                "oracle_rejected",
                "oracle_margin",
                "bt_p",
                "chosen_source",
                "rejected_source",
            )
        }
        base["replaced"] = True
        replaced_rows.append(
            _bt_row(
                base,
                (best_samples[i], float(best_scores[i]), "sft_best"),
                (human_reviews[i], float(human_scores[i]), "human"),
                us[i],
                temperature,
            )
        )
    k = int(n * medium_fraction)
    medium_idx = set(random.Random(f"sentiment-tiers-medium-{seed}").sample(range(n), k))
    tiers = {
        "high": [dict(r, tier="high", replaced=False) for r in rows],
        "medium": [dict(replaced_rows[i] if i in medium_idx else rows[i], tier="medium") for i in range(n)],
        "low": [dict(r, tier="low") for r in replaced_rows],
    }
    return tiers


def build_preference_tiers(
    model,
    tokenizer,
    prompts: Sequence[dict],
    *,
    oracle: Union[str, Callable] = "vader",
    n_samples: int = 2,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    bt_temperature: float = BT_TEMPERATURE,
    batch_size: int = 32,
    out_dir: Optional[Union[str, Path]] = None,
) -> Dict[str, List[dict]]:
    """Steps 4-7 for prompt rows from :func:`prompt_rows` (they need ``prompt`` and ``review``): sample
    ``n_samples`` (>= 2) continuations per prompt, score them with ``oracle``, label the first two with the
    Bradley-Terry draw, take the best of all samples for the replaced pairs, and build the tiers. With
    ``out_dir``, writes ``<out_dir>/{high,medium,low}.jsonl``."""
    from dpolab.rewards.oracles import get_oracle

    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    score = get_oracle(oracle)
    samples = sample_pairs(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        n=n_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    flat = score([s for group in samples for s in group])
    scores = [flat[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]
    high = label_pairs(
        prompts, [g[:2] for g in samples], [s[:2] for s in scores], seed=seed, temperature=bt_temperature
    )
    best = [max(range(n_samples), key=lambda j: (s[j], -j)) for s in scores]
    humans = [p["review"] for p in prompts]
    tiers = make_tiers(
        high,
        [g[j] for g, j in zip(samples, best)],
        humans,
        seed=seed,
        oracle=score,
        best_scores=[s[j] for s, j in zip(scores, best)],
        human_scores=score(humans),
        temperature=bt_temperature,
    )
    if out_dir is not None:
        from dpolab.rewards.score import write_rows

        for name, rows in tiers.items():
            write_rows(rows, Path(out_dir) / f"{name}.jsonl")
    return tiers


# -- the task: ``data.task=sentiment`` (SFT only) ------------------------------------------------------


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """SFT rows of IMDb reviews (prompt = the first ``prefix_words`` words, completion = the rest cut to
    ``max_chars``). ``path`` = the imdb-cad-sentiment folder (train from orig/train.tsv, eval from orig/dev.tsv)
    or a Hugging Face dataset name such as ``imdb`` (train split, eval from the test split). Only for SFT: the
    preference tiers need a model, see :func:`build_preference_tiers`."""
    if mode != "sft":
        raise DataError(
            "task 'sentiment' serves SFT only (train.mode=sft); build the preference tiers with "
            "dpolab.tasks.sentiment.build_preference_tiers and train on the JSONL (data.train=...)"
        )
    if "path" not in args:
        raise DataError(
            "task 'sentiment' needs data.task_args.path: the imdb-cad-sentiment folder "
            "(e.g. ../shared/data/imdb-cad-sentiment) or 'imdb'"
        )
    n_train, n_eval = args.get("n_train"), int(args.get("n_eval", 64))
    knobs = dict(
        max_chars=int(args.get("max_chars", SFT_MAX_CHARS)), prefix_words=int(args.get("prefix_words", PREFIX_WORDS))
    )
    root = Path(str(args["path"])).expanduser()
    if root.is_dir() and (root / "orig").is_dir():
        files = local_files(root)
        for split in ("train", "dev"):
            if not files[split].exists():
                raise DataError(
                    "file not found (expected the imdb-cad-sentiment folder layout orig/{train,dev}.tsv)",
                    source=str(files[split]),
                )
        train_src, eval_src = (str(files["train"]), None), (str(files["dev"]), None)
    else:
        train_src, eval_src = (str(args["path"]), "train"), (str(args["path"]), "test")
    data_seed = int(args.get("seed", seed))

    def subset(rows: List[Any], n: Optional[int]) -> List[Any]:  # seeded, in file order: the files are sorted by label
        if n is None or int(n) >= len(rows):
            return rows
        return [rows[i] for i in sorted(random.Random(data_seed).sample(range(len(rows)), int(n)))]

    train = subset(load_reviews(train_src[0], split=train_src[1]), n_train)
    evals = subset(load_reviews(eval_src[0], split=eval_src[1]), n_eval)
    return sft_rows(train, **knobs), sft_rows(evals, **knobs)


def oracle_reward_hook(rows: Sequence[Union[str, dict]], **options: Any):
    """Mean oracle (VADER) reward of sampled continuations of the prompts (``eval/oracle_reward``); options as
    :func:`dpolab.evaluation.oracle.oracle_reward_hook`."""
    from dpolab.evaluation.oracle import oracle_reward_hook as hook

    return hook(rows, **options)


register(
    Task(
        "sentiment",
        "IMDb review continuation (SFT; preference tiers need a model: build_preference_tiers)",
        ("path", "n_train", "n_eval", "prefix_words", "max_chars", "seed"),
        task_rows,
        {"oracle_reward": oracle_reward_hook},
    )
)
