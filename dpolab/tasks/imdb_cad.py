"""IMDb counterfactually-augmented sentiment data (Kaushik, Hovy & Lipton, ICLR 2020) as preference pairs.

``paired/*.tsv`` has the columns ``Sentiment<TAB>Text<TAB>batch_id``; the two rows sharing a ``batch_id`` are
an original review and a human minimal edit of it with the opposite label. The preferred response is the
positive one. Texts go through :func:`clean_text` (``<br />`` tags to line breaks, common non-ASCII
characters to ASCII, whitespace runs to one space) so the character tokenizer
(:func:`dpolab.models.tokenizer.build_char_tokenizer`, ASCII letters, digits, punctuation, space, newline)
sees almost no ``<unk>``.

Rows for study S3 (DPOP vs DPO on low and high edit-distance pairs), built from each pair (P, N) =
(positive text, negative text):

- :func:`minimal_edit_rows` (``edit_bucket`` 'low'): ``d`` = the first position where P and N differ, moved
  back to the start of its word. ``prompt`` = the shared text before ``d``: its last ``context_chars``
  characters at most, starting at a word (or ``empty_prompt``, default ``"Review: "``, when the edit is at the
  very start). ``chosen`` = P from ``d``, ``rejected`` = N from ``d``, both cut at a word boundary after about
  ``response_chars`` characters of P; the cut is *aligned* (words of P and N after ``d`` are matched with
  :class:`difflib.SequenceMatcher` and N is cut at the word matching P's cut; a cut falling inside an edited
  region is moved to its end), so both responses cover the same span of the review and differ only by the
  human edit(s) inside it. If aligning would make a response longer than ``2 * response_chars`` (a long
  rewrite), both are cut independently at about ``response_chars``. Rows whose responses are equal after
  cutting are dropped and counted ("edit outside the window"; cannot happen with the aligned cut unless the
  texts differ only in whitespace, kept as a guard).
- :func:`high_distance_rows` (``edit_bucket`` 'high'): the same rows (same prompts, same chosen, same
  selection for a given ``seed`` / ``max_rows``), with ``rejected`` replaced by the rejected response of a
  different review: a negative-sentiment span (the negative side of that review's own edit) of similar
  length. Donors are a seeded derangement within groups of rows of similar rejected length, so the
  multiset of rejected texts is exactly that of the low bucket: only the pairing differs between buckets.
- :func:`sft_rows`: ``{text}`` rows of the (cleaned) positive and negative reviews, cut to ``max_chars``, to
  warm a model up on review text.

Default sizes suit a character-level tiny model: ``context_chars=96`` and ``response_chars=96`` give
sequences of about 200 tokens (prompt + response + BOS/EOS) with the char tokenizer; ``max_chars=256`` for
SFT. On ``paired/train_paired.tsv`` (1,707 pairs) every pair gives a row.

Each preference row: ``{prompt, chosen, rejected, edit_bucket, batch_id, id}`` (``id`` is
``"<batch_id>:low"`` / ``"<batch_id>:high"`` so both buckets can be mixed in one file); high rows also carry
``donor_batch_id``. Extra scalar fields reach ``TokenizedPair.meta`` through the data pipeline.
"""

from __future__ import annotations

import difflib
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from dpolab.data.sources import Source, iter_records, source_name
from dpolab.data.types import DataError, SkipCounter
from dpolab.tasks.registry import Task, register

CONTEXT_CHARS = 96
RESPONSE_CHARS = 96
SFT_MAX_CHARS = 256
EMPTY_PROMPT = "Review: "
COLUMNS = ("Sentiment", "Text", "batch_id")
SKIP_BAD_BATCH = "batch without exactly one Positive and one Negative row"
SKIP_BAD_ROW = "malformed row"
SKIP_IDENTICAL_TEXTS = "identical texts after cleaning"
SKIP_OUTSIDE = "edit outside the window"

_BR = re.compile(r"(?:\s*<br\s*/?>\s*)+", re.IGNORECASE)
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline
_NEWLINES = re.compile(r" ?\n[\s]*")
_WORDS = re.compile(r"\S+\s*")
# Characters NFKD does not turn into ASCII; U+0080..U+009F are Windows-1252 bytes mis-decoded as Latin-1.
_ASCII_MAP = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u00b4": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2033": '"',
        "\u2013": "-",
        "\u2014": "--",
        "\u2012": "-",
        "\u2015": "--",
        "\u2212": "-",
        "\u00ad": "",
        "\u2026": "...",
        "\u00a0": " ",
        "\u00a8": "",
        "\u0131": "i",
        "\u00df": "ss",
        "\u00e6": "ae",
        "\u00c6": "AE",
        "\u0153": "oe",
        "\u0152": "OE",
        "\u00f8": "o",
        "\u00d8": "O",
        "\u0142": "l",
        "\u0141": "L",
        "\u00f0": "d",
        "\u00fe": "th",
        "\u00a3": "GBP ",
        "\u20ac": "EUR ",
        "\u00b0": " degrees",
        "\x91": "'",
        "\x92": "'",
        "\x93": '"',
        "\x94": '"',
        "\x96": "-",
        "\x97": "--",
        "\x85": "...",
        "\x95": "*",
    }
)


@dataclass(frozen=True)
class CadPair:
    """One counterfactual pair: the positive and the negative version of a review (cleaned text)."""

    batch_id: str
    positive_text: str
    negative_text: str


def clean_text(text: str) -> str:
    """``<br />`` runs -> one newline; common non-ASCII punctuation and accented letters -> ASCII (NFKD, then
    combining marks dropped); runs of spaces/tabs -> one space; stripped. Characters with no ASCII form are
    kept (the char tokenizer maps them to ``<unk>``)."""
    text = _BR.sub("\n", text).translate(_ASCII_MAP)
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = text.translate(_ASCII_MAP)  # NFKD can produce some of the mapped characters (e.g. U+00B4 -> ' ' + U+0301)
    text = _SPACES.sub(" ", text)
    return _NEWLINES.sub("\n", text).strip()


def load_cad_pairs(
    source: Source, *, skips: Optional[SkipCounter] = None, log: Callable[[str], Any] = print
) -> List[CadPair]:
    """Read a paired CAD file (or an in-memory list of records with the same columns) into :class:`CadPair` s.

    Pairs are in order of first appearance of their ``batch_id``. A batch without exactly one Positive and one
    Negative row, a malformed row (wrong number of fields) and a pair whose texts are identical after cleaning
    are counted in ``skips`` (pass a :class:`SkipCounter` to read the counts) and the summary is logged; only
    file-level problems (missing file, missing columns) raise :class:`DataError`.
    """
    skips = skips if skips is not None else SkipCounter()
    name = source_name(source)
    batches: Dict[str, List[Tuple[str, str]]] = defaultdict(list)
    for row, rec in iter_records(source):
        if isinstance(rec, DataError):  # read_records would stop here; a bad row is counted instead
            skips.add(SKIP_BAD_ROW)
            continue
        missing = [c for c in COLUMNS if c not in rec]
        if missing:
            raise DataError(
                f"missing column(s) {missing} (expected {', '.join(COLUMNS)}; got {', '.join(map(str, rec))})",
                source=name,
                row=row,
            )
        batches[str(rec["batch_id"])].append((str(rec["Sentiment"]).strip().capitalize(), str(rec["Text"] or "")))
    pairs = []
    for batch_id, rows in batches.items():
        labels = sorted(label for label, _ in rows)
        if labels != ["Negative", "Positive"]:
            skips.add(SKIP_BAD_BATCH, len(rows))
            continue
        texts = {label: clean_text(text) for label, text in rows}
        if texts["Positive"] == texts["Negative"] or not texts["Positive"] or not texts["Negative"]:
            skips.add(SKIP_IDENTICAL_TEXTS, 2)
            continue
        pairs.append(CadPair(batch_id, texts["Positive"], texts["Negative"]))
    log(f"{name}: {len(pairs)} CAD pairs loaded; {skips.summary()} (counts are rows)")
    return pairs


def _pairs(pairs_or_path: Union[Source, Sequence[CadPair]], log: Callable[[str], Any]) -> List[CadPair]:
    if isinstance(pairs_or_path, (list, tuple)) and all(isinstance(p, CadPair) for p in pairs_or_path):
        return list(pairs_or_path)
    return load_cad_pairs(pairs_or_path, log=log)


def _divergence(a: str, b: str) -> int:
    """The first position where ``a`` and ``b`` differ, moved back to the start of its word."""
    lim, d = min(len(a), len(b)), 0
    while d < lim and a[d] == b[d]:
        d += 1
    while d > 0 and not a[d - 1].isspace():
        d -= 1
    return d


def _context(shared: str, context_chars: int, empty_prompt: str) -> str:
    """The last ``context_chars`` characters of ``shared`` at most, starting at a word."""
    if not shared:
        return empty_prompt
    start = max(0, len(shared) - context_chars)
    if start > 0 and not shared[start - 1].isspace():
        m = re.search(r"\s+", shared[start:])
        if m is not None and start + m.end() < len(shared):
            start += m.end()
    return shared[start:]


def _n_words(words: Sequence[str], limit: int) -> int:
    """How many leading words fit in ``limit`` characters (trailing whitespace not counted); at least 1."""
    k, total = 0, 0
    for w in words:
        if k and total + len(w.rstrip()) > limit:
            break
        total += len(w)
        k += 1
    return k


def _responses(pos: str, neg: str, limit: int) -> Tuple[str, str]:
    """``pos`` and ``neg`` (both starting at the divergence) cut to the same span of about ``limit`` characters."""
    pw, nw = _WORDS.findall(pos), _WORDS.findall(neg)
    k = _n_words(pw, limit)
    if k >= len(pw):
        kp, kn = len(pw), len(nw)
    else:
        kp, kn = k, None
        ops = difflib.SequenceMatcher(
            None, [w.strip() for w in pw], [w.strip() for w in nw], autojunk=False
        ).get_opcodes()
        for tag, i1, i2, j1, j2 in ops:
            if tag == "equal" and i1 <= k <= i2:
                kn = j1 + (k - i1)
                break
            if tag != "equal" and i1 < k < i2:  # the cut falls inside an edit: take the whole edit
                kp, kn = i2, j2
                break
        if kn is None:  # pragma: no cover - opcodes cover every boundary of pw
            kn = _n_words(nw, limit)
    chosen, rejected = "".join(pw[:kp]).rstrip(), "".join(nw[:kn]).rstrip()
    if max(len(chosen), len(rejected)) > 2 * limit:  # a long rewrite: cut both independently
        chosen, rejected = "".join(pw[:k]).rstrip(), "".join(nw[: _n_words(nw, limit)]).rstrip()
    return chosen, rejected


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if not isinstance(v, int) or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")


def _subsample(rows: List[dict], max_rows: Optional[int], seed: int) -> List[dict]:
    if max_rows is None or max_rows >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


def minimal_edit_rows(
    pairs: Union[Source, Sequence[CadPair]],
    *,
    context_chars: int = CONTEXT_CHARS,
    response_chars: int = RESPONSE_CHARS,
    max_rows: Optional[int] = None,
    seed: int = 0,
    empty_prompt: str = EMPTY_PROMPT,
    skips: Optional[SkipCounter] = None,
    log: Callable[[str], Any] = print,
) -> List[dict]:
    """Low edit-distance rows ``{prompt, chosen, rejected, edit_bucket: 'low', batch_id, id}`` (module docstring).

    ``pairs`` is a list of :class:`CadPair` or a source for :func:`load_cad_pairs`. ``max_rows`` keeps a
    seeded random subset (in file order). Rows dropped because the edit lies outside the window are counted
    in ``skips`` and logged.
    """
    _check_sizes(context_chars=context_chars, response_chars=response_chars)
    skips = skips if skips is not None else SkipCounter()
    rows = []
    for p in _pairs(pairs, log):
        d = _divergence(p.positive_text, p.negative_text)
        chosen, rejected = _responses(p.positive_text[d:], p.negative_text[d:], response_chars)
        if chosen == rejected:
            skips.add(SKIP_OUTSIDE)
            continue
        prompt = _context(p.positive_text[:d], context_chars, empty_prompt)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "edit_bucket": "low",
                "batch_id": p.batch_id,
                "id": f"{p.batch_id}:low",
            }
        )
    if skips.total:
        log(f"imdb_cad minimal_edit_rows: {len(rows)} rows; {skips.summary()}")
    return _subsample(rows, max_rows, seed)


def _donors(lengths: Sequence[int], rng: random.Random, group: int) -> List[int]:
    """A derangement ``perm`` (``perm[i] != i``) pairing each index with one of similar length: indices
    sorted by length are cut into consecutive groups of ``group`` (the last one absorbs a remainder) and
    each group is permuted as one random cycle (Sattolo), so every index is a donor exactly once."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups = [order[i : i + group] for i in range(0, len(order), group)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2].extend(groups.pop())
    perm = list(range(len(lengths)))
    for g in groups:
        cyc = list(g)
        for i in range(len(cyc) - 1, 0, -1):  # Sattolo: a uniformly random single cycle
            j = rng.randrange(i)
            cyc[i], cyc[j] = cyc[j], cyc[i]
        for a, b in zip(cyc, cyc[1:] + cyc[:1]):
            perm[a] = b
    return perm


def high_distance_rows(
    pairs: Union[Source, Sequence[CadPair]],
    *,
    context_chars: int = CONTEXT_CHARS,
    response_chars: int = RESPONSE_CHARS,
    max_rows: Optional[int] = None,
    seed: int = 0,
    empty_prompt: str = EMPTY_PROMPT,
    length_group: int = 16,
    skips: Optional[SkipCounter] = None,
    log: Callable[[str], Any] = print,
) -> List[dict]:
    """High edit-distance control: :func:`minimal_edit_rows` with the same arguments (same prompts, chosen and
    selection), each ``rejected`` replaced by the rejected response of a different review of similar length
    (seeded; donors drawn within groups of ``length_group`` rows sorted by length). ``edit_bucket`` 'high',
    ``id`` ``"<batch_id>:high"``, plus ``donor_batch_id``. Needs at least 2 rows."""
    low = minimal_edit_rows(
        pairs,
        context_chars=context_chars,
        response_chars=response_chars,
        max_rows=max_rows,
        seed=seed,
        empty_prompt=empty_prompt,
        skips=skips,
        log=log,
    )
    if len(low) < 2:
        raise DataError(
            f"high_distance_rows needs at least 2 rows to take rejected responses from other reviews, got {len(low)}"
        )
    if length_group < 2:
        raise DataError(f"length_group must be >= 2, got {length_group}")
    perm = _donors([len(r["rejected"]) for r in low], random.Random(f"imdb-cad-high-{seed}"), length_group)
    return [
        dict(
            r,
            rejected=low[j]["rejected"],
            edit_bucket="high",
            id=f"{r['batch_id']}:high",
            donor_batch_id=low[j]["batch_id"],
        )
        for r, j in zip(low, perm)
    ]


def _cut_words(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary (a hard cut inside one long word)."""
    if len(text) <= limit:
        return text
    if text[limit].isspace():
        return text[:limit].rstrip()
    k = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
    return text[:k].rstrip() if k > 0 else text[:limit]


def sft_rows(
    pairs_or_path: Union[Source, Sequence[CadPair]],
    *,
    max_chars: int = SFT_MAX_CHARS,
    chunks: bool = False,
    log: Callable[[str], Any] = print,
) -> List[dict]:
    """``{text, sentiment, batch_id, id}`` rows of the positive and the negative review of each pair (in that
    order), each cut to ``max_chars`` at a word boundary; with ``chunks=True`` every review is split into
    consecutive word-boundary pieces of at most ``max_chars`` (the whole text, ids ``<batch_id>:pos:<k>``)."""
    _check_sizes(max_chars=max_chars)
    rows = []
    for p in _pairs(pairs_or_path, log):
        for sentiment, tag, text in (("Positive", "pos", p.positive_text), ("Negative", "neg", p.negative_text)):
            k = 0
            while text:
                piece = _cut_words(text, max_chars)
                rows.append(
                    {
                        "text": piece,
                        "sentiment": sentiment,
                        "batch_id": p.batch_id,
                        "id": f"{p.batch_id}:{tag}" + (f":{k}" if chunks else ""),
                    }
                )
                if not chunks:
                    break
                text, k = text[len(piece) :].lstrip(), k + 1
    return rows


# -- the task: ``data.task=imdb-cad`` ------------------------------------------------------------------


def task_rows(args: Dict[str, Any], mode: str, seed: int, tokenizer: Any = None) -> Tuple[List[dict], List[dict]]:
    """IMDb counterfactual pairs: ``path`` = the imdb-cad-sentiment folder (train from paired/train_paired.tsv,
    eval from paired/dev_paired.tsv); ``kind`` = low (minimal human edits) or high (another review's span)."""
    from pathlib import Path

    if "path" not in args:
        raise DataError(
            "task 'imdb-cad' needs data.task_args.path: the imdb-cad-sentiment folder "
            "(e.g. ../shared/data/imdb-cad-sentiment)"
        )
    root = Path(args["path"]).expanduser()
    files = {split: root / "paired" / f"{split}_paired.tsv" for split in ("train", "dev")}
    for f in files.values():
        if not f.exists():
            raise DataError(
                "file not found (expected the imdb-cad-sentiment folder layout paired/{train,dev}_paired.tsv)",
                source=str(f),
            )
    quiet = lambda s: None  # noqa: E731 - the loaders below report counts themselves
    n_train, n_eval = args.get("n_train"), int(args.get("n_eval", 64))
    data_seed = int(args.get("seed", seed))
    if mode == "sft":
        max_chars = int(args.get("max_chars", SFT_MAX_CHARS))
        return (
            sft_rows(str(files["train"]), max_chars=max_chars, chunks=True, log=quiet)[: n_train or None],
            sft_rows(str(files["dev"]), max_chars=max_chars, log=quiet)[:n_eval],
        )
    kind = args.get("kind", "low")
    if kind not in ("low", "high"):
        raise DataError(f"data.task_args.kind must be low or high, got {kind!r}")
    make = minimal_edit_rows if kind == "low" else high_distance_rows
    knobs = {k: int(args[k]) for k in ("context_chars", "response_chars") if k in args}
    train = make(str(files["train"]), max_rows=n_train, seed=data_seed, log=quiet, **knobs)
    evals = make(str(files["dev"]), max_rows=n_eval, seed=data_seed, log=quiet, **knobs)
    return train, evals


register(
    Task(
        "imdb-cad",
        "IMDb counterfactual review pairs: minimal human edits (low) or another review's span (high)",
        ("path", "kind", "n_train", "n_eval", "context_chars", "response_chars", "max_chars", "seed"),
        task_rows,
    )
)
