"""Paraphrase detection on Quora Question Pairs (study S1) as a one-token cloze task.

Source: the local CS224N file ``quora-dev.csv`` (TAB-separated despite its name; header
``\\tid\\tsentence1\\tsentence2\\tis_duplicate``; label ``0.0`` / ``1.0``), any file or in-memory records with
those columns, or, for online users, the GLUE ``qqp`` config on the Hugging Face hub (``source="glue/qqp"``,
columns ``question1``, ``question2``, ``label``, ``idx``; needs ``datasets`` and a network).

Malformed rows are reported, never crashed on: a row with the wrong number of fields or a label that is not
0/1 is counted in a :class:`~dpolab.data.types.SkipCounter` under the data pipeline's own reason
(``invalid row (field 'is_duplicate')``, :func:`dpolab.data.dataset.invalid_reason`) and named, with its row
number, in :attr:`QuoraData.bad_rows` and the log. On the real file: 20,214 rows, 2 malformed (rows 2576 and
14221, QQP indices 65479 and 264614: an unbalanced quote swallows the tab) -> 20,212 usable pairs.

Prompt (``PROMPT_TEMPLATE``)::

    Question 1: <sentence1>
    Question 2: <sentence2>
    Are these two questions paraphrases? Answer:<answer_prefix>

answered by ONE label token: ``labels = (yes, no)``. Defaults: ``(" yes", " no")`` with ``answer_prefix=""`` (one
GPT-2 BPE token each: 3763 and 645); for a tokenizer where these are not single tokens (the character
tokenizer) :func:`resolve_labels` with ``labels="auto"`` falls back to ``("Y", "N")`` with ``answer_prefix=" "``.
:func:`check_labels` verifies that both labels are single, distinct tokens that survive concatenation after
the prompt, and raises :class:`~dpolab.data.types.DataError` naming the label and its tokens otherwise.

Rows: :func:`sft_rows` ``{prompt, completion = correct label, label, id, qid}``; :func:`preference_rows`
``{prompt, chosen = correct label, rejected = the other label, label, id, qid}`` (``label`` 1 = paraphrase).

Split (:func:`split_pairs`): seeded and grouped. ``group="pair"`` (default) keys a pair by its normalised,
ORDER-FREE question pair (lower-cased, whitespace collapsed, the two questions sorted), so a pair and any
repeat of it (also with the questions swapped) always land in the same split: no question pair is in two
splits. ``group="question"`` is stricter: pairs sharing any question are joined (union-find) and each
connected group goes to one split, so no single question appears in two splits either.

Metrics (:func:`label_metrics`): one forward pass per batch over the prompts (left-truncated to
``max_prompt_length``; the head applied only at the answer position, :func:`label_logps`); at the last prompt
position the log-probs of the two label tokens are compared
(argmax over the two, ties -> "no"). Accuracy and macro-F1 (the mean of the F1 of the "paraphrase" and the
"not paraphrase" class); also ``p_yes`` (share predicted paraphrase) and ``label_margin`` (mean log p(correct) -
log p(wrong)). :func:`label_metrics_hook` wraps it for the engine's ``eval_hooks``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from dpolab.data.dataset import invalid_reason
from dpolab.data.sources import Source, iter_records, source_name
from dpolab.data.types import DataError, SkipCounter
from dpolab.tasks.registry import Task, register

PROMPT_TEMPLATE = "Question 1: {q1}\nQuestion 2: {q2}\nAre these two questions paraphrases? Answer:{prefix}"
DEFAULT_LABELS = (" yes", " no")
CHAR_LABELS = ("Y", "N")
CHAR_PREFIX = " "
HUB_NAMES = ("glue/qqp", "nyu-mll/glue/qqp", "qqp")
LABEL_FIELD = "is_duplicate"
GROUPS = ("pair", "question")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class QuestionPair:
    id: str  # the row's id (the 25-hex hash of the CS224N file, or the hub's idx)
    qid: str  # the original QQP row index (first column), '' when absent
    sentence1: str
    sentence2: str
    label: int  # 1 = paraphrase (duplicate), 0 = not

    @property
    def key(self) -> Tuple[str, str]:
        """The canonical, order-free key of the question pair."""
        a, b = normalise(self.sentence1), normalise(self.sentence2)
        return (a, b) if a <= b else (b, a)


@dataclass
class QuoraData:
    pairs: List[QuestionPair]
    skips: SkipCounter
    bad_rows: List[str] = field(default_factory=list)  # one line per malformed row: "path: row N: field ...: reason"
    source: str = ""


def normalise(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


def _label(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(value))
    return None


def _hub_records(split: str):
    import datasets  # online users only

    ds = datasets.load_dataset("nyu-mll/glue", "qqp", split=split)
    for rec in ds:
        yield {
            "": "",
            "id": str(rec["idx"]),
            "sentence1": rec["question1"],
            "sentence2": rec["question2"],
            LABEL_FIELD: rec["label"],
        }


def load_pairs(
    source: Union[Source, str],
    *,
    split: str = "train",
    skips: Optional[SkipCounter] = None,
    log: Callable[[str], Any] = print,
) -> QuoraData:
    """Read question pairs; malformed rows are counted in ``skips`` and named in ``bad_rows`` (never raised).

    ``source``: a file (the CS224N TSV or any table with the columns ``sentence1``, ``sentence2``,
    ``is_duplicate`` and optionally ``id`` and an unnamed first index column), in-memory records, or one of
    ``HUB_NAMES`` for GLUE QQP from the hub (``split`` = train / validation; the hub's test split is
    unlabelled, so all its rows would be reported as malformed). File-level problems raise :class:`DataError`.
    """
    skips = skips if skips is not None else SkipCounter()
    is_hub = isinstance(source, str) and source in HUB_NAMES
    name = f"hub:nyu-mll/glue/qqp[{split}]" if is_hub else source_name(source)
    records = ((i, r) for i, r in enumerate(_hub_records(split), 1)) if is_hub else iter_records(source)
    pairs: List[QuestionPair] = []
    bad: List[str] = []

    def report(err: DataError) -> None:
        skips.add(invalid_reason(err))
        bad.append(str(err))

    for row, rec in records:
        if isinstance(rec, DataError):
            report(DataError(rec.reason, source=name, row=row, field=rec.field))
            continue
        missing = [c for c in ("sentence1", "sentence2", LABEL_FIELD) if c not in rec]
        if missing:
            raise DataError(
                f"missing column(s) {missing} (expected sentence1, sentence2, is_duplicate; "
                f"got {', '.join(map(str, rec))})",
                source=name,
                row=row,
            )
        label = _label(rec[LABEL_FIELD])
        if label is None:
            report(
                DataError(
                    f"expected label 0.0 or 1.0, got {rec[LABEL_FIELD]!r} (QQP index {rec.get('', '')!r})",
                    source=name,
                    row=row,
                    field=LABEL_FIELD,
                )
            )
            continue
        s1, s2 = rec["sentence1"], rec["sentence2"]
        if not isinstance(s1, str) or not isinstance(s2, str) or not s1.strip() or not s2.strip():
            report(
                DataError(
                    "empty or non-text question",
                    source=name,
                    row=row,
                    field="sentence1" if not (isinstance(s1, str) and s1.strip()) else "sentence2",
                )
            )
            continue
        pairs.append(QuestionPair(str(rec.get("id", row)), str(rec.get("", "")), s1.strip(), s2.strip(), label))
    for msg in bad[:5]:
        log(f"skipping bad row: {msg}")
    log(f"{name}: {len(pairs)} question pairs loaded; {skips.summary()}")
    return QuoraData(pairs, skips, bad, name)


# -- split ------------------------------------------------------------------------------------------------


def _groups(pairs: Sequence[QuestionPair], group: str) -> List[List[int]]:
    """Indices of ``pairs`` grouped so that each group must go to one split (in order of first appearance)."""
    if group not in GROUPS:
        raise DataError(f"group must be one of {GROUPS}, got {group!r}")
    if group == "pair":
        by_key: Dict[Tuple[str, str], List[int]] = {}
        for i, p in enumerate(pairs):
            by_key.setdefault(p.key, []).append(i)
        return list(by_key.values())
    parent: Dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find(p.key[0]), find(p.key[1])
        if a != b:
            parent[a] = b
    by_root: Dict[str, List[int]] = {}
    for i, p in enumerate(pairs):
        by_root.setdefault(find(p.key[0]), []).append(i)
    return list(by_root.values())


def _count(size: Union[int, float], total: int, name: str) -> int:
    if isinstance(size, float) and 0.0 <= size < 1.0:
        return int(round(size * total))
    if isinstance(size, (int, float)) and size >= 0 and float(size).is_integer():
        return int(size)
    raise DataError(f"{name} must be a fraction in [0, 1) or a count >= 0, got {size!r}")


def split_pairs(
    pairs: Sequence[QuestionPair],
    *,
    seed: int = 0,
    dev: Union[int, float] = 0.1,
    test: Union[int, float] = 0.1,
    group: str = "pair",
) -> Dict[str, List[QuestionPair]]:
    """Seeded ``{train, dev, test}`` split; ``dev`` / ``test`` are fractions of the pairs or counts (filled with
    whole groups, so a count may be exceeded by the size of the last group). Each group of :func:`_groups`
    goes to exactly one split; train gets the rest. Pairs keep their file order within a split."""
    groups = _groups(pairs, group)
    order = list(range(len(groups)))
    random.Random(f"paraphrase-split-{seed}").shuffle(order)
    want = {"dev": _count(dev, len(pairs), "dev"), "test": _count(test, len(pairs), "test")}
    if want["dev"] + want["test"] > len(pairs):
        raise DataError(f"dev + test = {want['dev'] + want['test']} pairs, more than the {len(pairs)} available")
    where: Dict[int, str] = {}
    filled = {"dev": 0, "test": 0}
    for g in order:
        split = next((s for s in ("test", "dev") if filled[s] < want[s]), "train")
        if split != "train":
            filled[split] += len(groups[g])
        for i in groups[g]:
            where[i] = split
    out: Dict[str, List[QuestionPair]] = {"train": [], "dev": [], "test": []}
    for i, p in enumerate(pairs):
        out[where[i]].append(p)
    return out


# -- labels and rows ---------------------------------------------------------------------------------------


def label_token_ids(tokenizer, labels: Sequence[str] = DEFAULT_LABELS) -> Tuple[int, int]:
    """The token ids of (yes, no); :class:`DataError` if either is not exactly one token or they are equal."""
    if len(labels) != 2 or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"labels must be two non-empty strings (yes, no), got {labels!r}", field="labels")
    ids = []
    for text in labels:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise DataError(
                f"label {text!r} is {len(toks)} tokens {toks} under this tokenizer; "
                "the paraphrase task needs ONE token "
                f"per label (e.g. {DEFAULT_LABELS} for GPT-2 BPE, {CHAR_LABELS} with answer_prefix {CHAR_PREFIX!r} "
                "for the "
                "character tokenizer)",
                field="labels",
            )
        ids.append(toks[0])
    if ids[0] == ids[1]:
        raise DataError(f"labels {labels!r} map to the same token {ids[0]}", field="labels")
    return ids[0], ids[1]


def check_labels(tokenizer, labels: Sequence[str] = DEFAULT_LABELS, answer_prefix: str = "") -> Tuple[int, int]:
    """:func:`label_token_ids` plus a check that each label stays one token when tokenised separately from a
    prompt ending in ``Answer:<answer_prefix>`` (what training does) and that the prompt's own tokens are
    unchanged by it. Returns the (yes, no) token ids."""
    ids = label_token_ids(tokenizer, labels)
    prompt = build_prompt("a", "b", answer_prefix)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for text, tid in zip(labels, ids):
        joint = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        if joint != p_ids + [tid]:
            raise DataError(
                f"label {text!r} after the prompt ending {prompt[-12:]!r} does not tokenise as prompt + one label "
                "token "
                f"({joint[-4:]} vs {(p_ids + [tid])[-4:]}); change labels or answer_prefix",
                field="labels",
            )
    return ids


def resolve_labels(
    tokenizer, labels: Union[str, Sequence[str]] = "auto", answer_prefix: Optional[str] = None
) -> Tuple[Tuple[str, str], str]:
    """``(labels, answer_prefix)`` checked for ``tokenizer``. ``labels="auto"``: ``(" yes", " no")`` with prefix ''
    when those are single tokens, else ``("Y", "N")`` with prefix ' '."""
    if labels == "auto":
        try:
            check_labels(tokenizer, DEFAULT_LABELS, "" if answer_prefix is None else answer_prefix)
            labels, answer_prefix = DEFAULT_LABELS, "" if answer_prefix is None else answer_prefix
        except DataError:
            labels, answer_prefix = CHAR_LABELS, CHAR_PREFIX if answer_prefix is None else answer_prefix
    labels = tuple(labels)
    answer_prefix = "" if answer_prefix is None else answer_prefix
    check_labels(tokenizer, labels, answer_prefix)
    return labels, answer_prefix  # type: ignore[return-value]


def build_prompt(q1: str, q2: str, answer_prefix: str = "") -> str:
    return PROMPT_TEMPLATE.format(q1=q1, q2=q2, prefix=answer_prefix)


def sft_rows(
    pairs: Sequence[QuestionPair], *, labels: Sequence[str] = DEFAULT_LABELS, answer_prefix: str = ""
) -> List[dict]:
    """``{prompt, completion, label, id, qid}``: the completion is the correct label string."""
    return [
        {
            "prompt": build_prompt(p.sentence1, p.sentence2, answer_prefix),
            "completion": labels[0] if p.label else labels[1],
            "label": p.label,
            "id": p.id,
            "qid": p.qid,
        }
        for p in pairs
    ]


def preference_rows(
    pairs: Sequence[QuestionPair], *, labels: Sequence[str] = DEFAULT_LABELS, answer_prefix: str = ""
) -> List[dict]:
    """``{prompt, chosen, rejected, label, id, qid}``: chosen = the correct label, rejected = the other one."""
    out = []
    for r in sft_rows(pairs, labels=labels, answer_prefix=answer_prefix):
        wrong = labels[1] if r["label"] else labels[0]
        out.append(
            {
                "prompt": r["prompt"],
                "chosen": r.pop("completion"),
                "rejected": wrong,
                **{k: r[k] for k in ("label", "id", "qid")},
            }
        )
    return out


# -- metrics -----------------------------------------------------------------------------------------------


def _prompt_ids(tokenizer, prompt: str, max_prompt_length: int) -> List[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if len(ids) > max_prompt_length:  # keep the end (the question near the answer), BOS in front
        ids = ([bos] if bos is not None else []) + ids[len(ids) - max_prompt_length + (1 if bos is not None else 0) :]
    return ids


@torch.no_grad()
def label_logps(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    batch_size: int = 32,
    max_prompt_length: int = 512,
) -> torch.Tensor:
    """``[N, 2]`` log-probs of the (yes, no) label tokens right after each prompt (one forward per batch).

    Each prompt is scored as a preference pair (chosen = yes, rejected = no) by the models' fast exact path
    (:func:`dpolab.models.fastpath.batch_logps`, prompt-shared layout, the LM head applied only at the answer
    position): the same numbers as a full forward's ``log_softmax`` at the last prompt token, without the
    [batch, length, vocabulary] logits. A model whose fast path fails its probe gets the plain path."""
    from dpolab.data.collate import collate_preference_fast
    from dpolab.data.types import TokenizedPair
    from dpolab.models.fastpath import batch_logps

    yes, no = label_token_ids(tokenizer, labels)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(prompts), batch_size):
        pairs = [
            TokenizedPair(_prompt_ids(tokenizer, p, max_prompt_length), [yes], [no])
            for p in prompts[start : start + batch_size]
        ]
        batch = collate_preference_fast(pairs, pad, "prefix").to(device)
        sums = batch_logps(model, batch, layout="prefix", logits="response").sums.float()
        out.append(torch.stack([sums[: len(pairs)], sums[len(pairs) :]], dim=1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2))


def classification_metrics(pred: Sequence[int], gold: Sequence[int]) -> Dict[str, float]:
    """Accuracy and macro-F1 over the two classes (1 = paraphrase, 0 = not); an empty class has F1 0."""
    n = len(gold)
    acc = sum(int(p == g) for p, g in zip(pred, gold)) / max(1, n)
    f1s = []
    for c in (1, 0):
        tp = sum(1 for p, g in zip(pred, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(pred, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(pred, gold) if p != c and g == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": acc, "macro_f1": sum(f1s) / 2, "f1_paraphrase": f1s[0], "f1_not_paraphrase": f1s[1]}


def label_metrics(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    batch_size: int = 32,
    max_prompt_length: int = 512,
) -> Dict[str, float]:
    """``{accuracy, macro_f1, f1_paraphrase, f1_not_paraphrase, p_yes, label_margin, n}`` over rows with
    ``prompt`` and ``label`` (1/0): the prediction is the label token with the higher log-prob."""
    rows = list(rows)
    lp = label_logps(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        labels=labels,
        batch_size=batch_size,
        max_prompt_length=max_prompt_length,
    )
    gold = [int(r["label"]) for r in rows]
    pred = (lp[:, 0] > lp[:, 1]).long().tolist() if rows else []
    res = classification_metrics(pred, gold)
    sign = torch.tensor([1.0 if g else -1.0 for g in gold])
    res["p_yes"] = sum(pred) / max(1, len(pred))
    res["label_margin"] = float(((lp[:, 0] - lp[:, 1]) * sign).mean()) if rows else 0.0
    res["n"] = len(rows)
    return res


def label_metrics_hook(
    rows: Sequence[dict],
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    limit: Optional[int] = 512,
    batch_size: int = 32,
    max_prompt_length: int = 512,
) -> Callable[[Any, Any, int], Dict[str, float]]:
    """An engine eval hook (``train(cfg, eval_hooks=[...])``) logging ``eval/accuracy``, ``eval/macro_f1``, ..."""
    rows = list(rows)[:limit] if limit else list(rows)

    def hook(model, tokenizer, step: int) -> Dict[str, float]:
        return label_metrics(
            model, tokenizer, rows, labels=labels, batch_size=batch_size, max_prompt_length=max_prompt_length
        )

    return hook


# -- the task: ``data.task=paraphrase`` ----------------------------------------------------------------

DEFAULT_PATH = "../shared/data/quora-paraphrase/quora-dev.csv"


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """Quora Question Pairs: ``path`` = the TSV (default ../shared/data/quora-paraphrase/quora-dev.csv) or
    ``glue/qqp`` (hub; ``hub_split``); a seeded grouped split (``dev``, ``test``: fractions or counts; ``group``:
    pair | question); eval from ``eval_split`` (dev | test); ``labels`` (auto or [yes, no]) and ``answer_prefix``
    are checked against the tokenizer (when given)."""
    path = str(args.get("path", DEFAULT_PATH))
    data_seed = int(args.get("seed", seed))
    eval_split = args.get("eval_split", "dev")
    if eval_split not in ("dev", "test"):
        raise DataError(f"data.task_args.eval_split must be dev or test, got {eval_split!r}")
    labels, prefix = args.get("labels", "auto"), args.get("answer_prefix")
    if tokenizer is not None:
        labels, prefix = resolve_labels(tokenizer, labels, prefix)
    elif labels == "auto":
        labels, prefix = DEFAULT_LABELS, prefix or ""
    loaded = load_pairs(path, split=str(args.get("hub_split", "train")))  # logs the malformed rows and the count
    splits = split_pairs(
        loaded.pairs,
        seed=data_seed,
        dev=args.get("dev", 0.1),
        test=args.get("test", 0.1),
        group=args.get("group", "pair"),
    )
    n_train, n_eval = args.get("n_train"), args.get("n_eval", 512)
    train_p, eval_p = splits["train"][: n_train or None], splits[eval_split][: n_eval or None]
    make = sft_rows if mode == "sft" else preference_rows
    return (
        make(train_p, labels=labels, answer_prefix=prefix or ""),
        make(eval_p, labels=labels, answer_prefix=prefix or ""),
    )


register(
    Task(
        "paraphrase",
        "Quora Question Pairs as a one-token yes/no cloze (labels checked against the tokenizer)",
        (
            "path",
            "hub_split",
            "seed",
            "dev",
            "test",
            "group",
            "n_train",
            "n_eval",
            "eval_split",
            "labels",
            "answer_prefix",
        ),
        task_rows,
        {"labels": label_metrics_hook},
    )
)
