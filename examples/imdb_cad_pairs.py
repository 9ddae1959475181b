"""Turn the IMDb counterfactually-augmented sentiment data into chat-style preference pairs.

Kaushik, Hovy & Lipton (ICLR 2020) had people edit IMDb reviews minimally so that the sentiment flips; the two rows
of a ``batch_id`` in ``paired/*_paired.tsv`` are a review and its opposite. This script makes one pair per
``batch_id``: the user asks for a positive review, the positive text is ``chosen`` and its negative edit is
``rejected`` (the two differ in a few words, so the pair isolates sentiment from everything else).

    python examples/imdb_cad_pairs.py ../shared/data/imdb-cad-sentiment/paired/train_paired.tsv \
        runs/imdb_pairs_train.jsonl --first-words 40
    python examples/imdb_cad_pairs.py ../shared/data/imdb-cad-sentiment/paired/dev_paired.tsv \
        runs/imdb_pairs_dev.jsonl --first-words 40 --limit 32

The output is the JSONL every ``dpolab`` command reads (``prompt`` / ``chosen`` / ``rejected`` as chat messages).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import OrderedDict
from pathlib import Path

PROMPT = "Write a short positive review of a movie you watched."


def clean(text: str) -> str:
    return " ".join(text.replace("<br />", " ").replace("<br/>", " ").split())


def read_pairs(path: Path) -> list:
    groups: "OrderedDict[str, dict]" = OrderedDict()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"Sentiment", "Text", "batch_id"} - set(reader.fieldnames or [])
        if missing:
            sys.exit(f"{path}: missing column(s) {sorted(missing)}; expected Sentiment, Text, batch_id")
        for line, row in enumerate(reader, start=2):
            label = (row["Sentiment"] or "").strip().lower()
            if label not in ("positive", "negative"):
                sys.exit(f"{path}:{line}: field 'Sentiment' is {row['Sentiment']!r}, expected Positive or Negative")
            groups.setdefault(row["batch_id"], {})[label] = clean(row["Text"] or "")
    return [(bid, g) for bid, g in groups.items() if "positive" in g and "negative" in g]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tsv", type=Path, help="paired/*_paired.tsv of the IMDb CAD data")
    ap.add_argument("out", type=Path, help="output JSONL")
    ap.add_argument(
        "--max-words",
        type=int,
        default=0,
        help="keep only pairs whose longer review has at most this many words (0: keep all)",
    )
    ap.add_argument(
        "--first-words",
        type=int,
        default=0,
        help="cut both reviews of a pair to their first N words (pairs whose cut texts are equal are "
        "dropped); makes every sequence short, for a CPU",
    )
    ap.add_argument("--limit", type=int, default=0, help="keep at most this many pairs (0: all), in file order")
    args = ap.parse_args(argv)
    pairs = read_pairs(args.tsv)
    kept = [
        (b, g)
        for b, g in pairs
        if not args.max_words or max(len(g["positive"].split()), len(g["negative"].split())) <= args.max_words
    ]
    if args.first_words:
        kept = [(b, {k: " ".join(v.split()[: args.first_words]) for k, v in g.items()}) for b, g in kept]
    kept = [(b, g) for b, g in kept if g["positive"] != g["negative"]]
    if args.limit:
        kept = kept[: args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for bid, g in kept:
            f.write(
                json.dumps(
                    {
                        "id": f"imdb-cad-{bid}",
                        "prompt": [{"role": "user", "content": PROMPT}],
                        "chosen": [{"role": "assistant", "content": g["positive"]}],
                        "rejected": [{"role": "assistant", "content": g["negative"]}],
                    }
                )
                + "\n"
            )
    print(f"{args.out}: {len(kept)} pairs (of {len(pairs)} in {args.tsv})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
