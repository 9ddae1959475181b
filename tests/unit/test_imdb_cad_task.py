"""The IMDb CAD task on a small synthetic paired TSV: loading and cleaning, low-distance rows (aligned cuts),
the high-distance control, SFT rows, and the pipeline with the char tokenizer."""

import random
from collections import Counter

import pytest

from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.types import DataError, SkipCounter
from dpolab.diagnostics import bucket_pairs, token_edit_distance
from dpolab.models.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer
from dpolab.tasks import imdb_cad as C

FILLER = "The cinematography was competent and the score did its job without drawing attention to itself. "
ROWS = [  # (Sentiment, Text, batch_id)
    (
        "Negative",
        "I watched it twice. The plot was slow and the acting was awful; I hated every minute of it. The end.",
        "1",
    ),
    (
        "Positive",
        "I watched it twice. The plot was slow but the acting was great; I loved every minute of it. The end.",
        "1",
    ),
    ("Positive", "Great film.<br /><br />A \u201cmust\u201d \u2013 caf\u00e9 scenes\x97wonderful.", "2"),
    ("Negative", "Awful film.<br /><br />A \u201cmust\u201d \u2013 caf\u00e9 scenes\x97dreadful.", "2"),
    ("Positive", "An orphan row whose partner is missing.", "3"),
    ("Positive", FILLER * 6 + "Overall it is a lovely movie.", "4"),  # the edit is ~600 characters in
    ("Negative", FILLER * 6 + "Overall it is a dreadful movie.", "4"),
    ("Positive", "Two positives.", "5"),
    ("Positive", "Two positives!", "5"),
]


def write_tsv(path, rows):
    path.write_text("Sentiment\tText\tbatch_id\n" + "".join(f"{s}\t{t}\t{b}\n" for s, t, b in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def tsv(tmp_path):
    return write_tsv(tmp_path / "train_paired.tsv", ROWS)


def quiet(_msg):
    pass


def many_pairs(n=40, seed=0):
    """In-memory pairs of varied length, one or two word edits each."""
    rng = random.Random(seed)
    words = "the film story actor scene music plot script camera light long short old new".split()
    pairs = []
    for i in range(n):
        head = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        tail = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
        pairs.append(
            C.CadPair(str(i), f"{head} it was superb and {tail}".strip(), f"{head} it was dull and {tail}".strip())
        )
    return pairs


def test_clean_text():
    assert C.clean_text("a<br /><br />b <br/>c<BR>d") == "a\nb\nc\nd"
    assert (
        C.clean_text("  \u201cCaf\u00e9\u201d \u2013 na\u00efve\u2019s \x96 it\u00b4s\x85  \t ok ")
        == "\"Cafe\" - naive's - it's... ok"
    )
    assert C.clean_text("Bront\u00eb\u2014\u00a3") == "Bronte--GBP"
    assert C.clean_text("a \n\n b") == "a\nb"


def test_load_pairs_counts_broken_batches(tsv):
    logs, skips = [], SkipCounter()
    pairs = C.load_cad_pairs(tsv, skips=skips, log=logs.append)
    assert [p.batch_id for p in pairs] == ["1", "2", "4"]
    assert skips.counts == {C.SKIP_BAD_BATCH: 3}  # batch 3 (one row) and batch 5 (two Positive rows), counted in rows
    assert "3 CAD pairs loaded" in logs[0] and "skipped 3 batch without" in logs[0]
    p2 = pairs[1]
    assert p2.positive_text == 'Great film.\nA "must" - cafe scenes--wonderful.'
    assert p2.negative_text.startswith("Awful film.\n") and "<br" not in p2.negative_text
    assert set(p2.positive_text + p2.negative_text) <= set(DEFAULT_ALPHABET)


def test_load_pairs_bad_rows_are_counted_and_missing_columns_raise(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text(
        "Sentiment\tText\tbatch_id\nPositive\tgood\t1\nNegative\tbad\t1\nPositive\tonly two fields\n"
        "Positive\tsame\t2\nNegative\tsame\t2\n",
        encoding="utf-8",
    )
    skips = SkipCounter()
    assert [p.batch_id for p in C.load_cad_pairs(str(path), skips=skips, log=quiet)] == ["1"]
    assert skips.counts == {C.SKIP_BAD_ROW: 1, C.SKIP_IDENTICAL_TEXTS: 2}
    with pytest.raises(DataError, match="missing column"):
        C.load_cad_pairs([{"label": "Positive", "Text": "x", "batch_id": 1}], log=quiet)


def test_minimal_edit_rows(tsv):
    rows = C.minimal_edit_rows(tsv, log=quiet)
    assert [r["batch_id"] for r in rows] == ["1", "2", "4"]
    r1, r2, r4 = rows
    assert r1 == {
        "prompt": "I watched it twice. The plot was slow ",
        "chosen": "but the acting was great; I loved every minute of it. The end.",
        "rejected": "and the acting was awful; I hated every minute of it. The end.",
        "edit_bucket": "low",
        "batch_id": "1",
        "id": "1:low",
    }
    assert (
        r2["prompt"] == C.EMPTY_PROMPT
        and r2["chosen"].startswith("Great film.\n")
        and r2["rejected"].startswith("Awful film.\n")
    )
    # an edit far into the review: the window follows it, so it is not lost
    assert (
        r4["prompt"] == "was competent and the score did its job without drawing attention to itself. Overall it is a "
    )
    assert len(r4["prompt"]) <= C.CONTEXT_CHARS < len(r4["prompt"]) + len("The cinematography ")
    assert (r4["chosen"], r4["rejected"]) == ("lovely movie.", "dreadful movie.")
    for r in rows:
        assert r["chosen"] != r["rejected"] and len(r["chosen"]) <= C.RESPONSE_CHARS


def test_cut_is_aligned_and_covers_the_same_span():
    tail = " ".join(f"w{i}" for i in range(60))
    pairs = [C.CadPair("a", "It was a truly wonderful and moving film, " + tail, "It was a bad film, " + tail)]
    (r,) = C.minimal_edit_rows(pairs, response_chars=40, log=quiet)
    assert r["prompt"] == "It was a "
    assert r["chosen"].startswith("truly wonderful and moving film, w0")
    assert r["rejected"].startswith("bad film, w0")
    assert r["chosen"].split()[-1] == r["rejected"].split()[-1]  # both end at the same word of the review
    assert r["chosen"].split()[4:] == r["rejected"].split()[1:]  # and differ only by the edit
    # a cut falling inside a multi-word edit is moved to the end of the edit
    p = C.CadPair("b", "x " + "lovely " * 4 + "end of it all", "x " + "awful " * 4 + "end of it all")
    (r,) = C.minimal_edit_rows([p], response_chars=20, log=quiet)  # 3 of the 4 edited words fit in 20 chars
    assert r["chosen"] == ("lovely " * 4).strip() and r["rejected"] == ("awful " * 4).strip()
    # a long rewrite (aligned responses over 2 * response_chars) is cut independently
    p = C.CadPair("c", "x " + "lovely " * 12 + "end", "x " + "awful " * 12 + "end")
    (r,) = C.minimal_edit_rows([p], response_chars=20, log=quiet)
    assert r["chosen"] == "lovely lovely lovely" and r["rejected"] == "awful awful awful"


def test_context_window_starts_at_a_word():
    p = C.CadPair("a", "abcdefghij klmnop qrstu vwxyz good", "abcdefghij klmnop qrstu vwxyz bad")
    assert C.minimal_edit_rows([p], context_chars=18, log=quiet)[0]["prompt"] == "qrstu vwxyz "
    assert C.minimal_edit_rows([p], context_chars=1000, log=quiet)[0]["prompt"] == "abcdefghij klmnop qrstu vwxyz "


def test_identical_responses_are_dropped_and_counted(monkeypatch):
    monkeypatch.setattr(C, "_responses", lambda pos, neg, limit: ("same", "same"))  # e.g. an edit outside the window
    skips, logs = SkipCounter(), []
    assert C.minimal_edit_rows(many_pairs(3), skips=skips, log=logs.append) == []
    assert skips.counts == {C.SKIP_OUTSIDE: 3} and "edit outside the window" in logs[-1]


def test_high_distance_rows_share_prompts_and_chosen():
    pairs = many_pairs(40)
    low = C.minimal_edit_rows(pairs, log=quiet)
    high = C.high_distance_rows(pairs, seed=0, log=quiet)
    assert [(r["prompt"], r["chosen"], r["batch_id"]) for r in high] == [
        (r["prompt"], r["chosen"], r["batch_id"]) for r in low
    ]
    assert all(r["edit_bucket"] == "high" and r["id"] == f"{r['batch_id']}:high" for r in high)
    assert all(r["donor_batch_id"] != r["batch_id"] for r in high)
    by_batch = {r["batch_id"]: r["rejected"] for r in low}
    assert all(r["rejected"] == by_batch[r["donor_batch_id"]] for r in high)
    assert Counter(r["rejected"] for r in high) == Counter(r["rejected"] for r in low)  # only the pairing differs
    assert high == C.high_distance_rows(pairs, seed=0, log=quiet) != C.high_distance_rows(pairs, seed=1, log=quiet)
    dist = lambda rows: sorted(token_edit_distance(r["chosen"], r["rejected"]) for r in rows)  # noqa: E731
    assert dist(low)[len(low) // 2] * 3 < dist(high)[len(high) // 2]
    with pytest.raises(ValueError):
        C.high_distance_rows(pairs[:1], log=quiet)


def test_max_rows_picks_the_same_pairs_in_both_buckets():
    pairs = many_pairs(30)
    low = C.minimal_edit_rows(pairs, max_rows=10, seed=3, log=quiet)
    high = C.high_distance_rows(pairs, max_rows=10, seed=3, log=quiet)
    ids = [r["batch_id"] for r in low]
    assert len(low) == 10 and ids == [r["batch_id"] for r in high] and ids == sorted(ids, key=int)
    assert ids != [r["batch_id"] for r in C.minimal_edit_rows(pairs, max_rows=10, seed=4, log=quiet)]
    with pytest.raises(ValueError):
        C.minimal_edit_rows(pairs, context_chars=0, log=quiet)


def test_sft_rows(tsv):
    rows = C.sft_rows(tsv, max_chars=50, log=quiet)
    assert [r["id"] for r in rows] == ["1:pos", "1:neg", "2:pos", "2:neg", "4:pos", "4:neg"]
    assert all(0 < len(r["text"]) <= 50 and not r["text"].endswith(" ") for r in rows)
    assert rows[0]["text"] == "I watched it twice. The plot was slow but the" and rows[1]["sentiment"] == "Negative"
    pairs = C.load_cad_pairs(tsv, log=quiet)
    chunks = C.sft_rows(pairs, max_chars=50, chunks=True, log=quiet)
    assert (
        " ".join(r["text"] for r in chunks if r["batch_id"] == "4" and r["sentiment"] == "Positive")
        == pairs[2].positive_text
    )
    assert all(len(r["text"]) <= 50 for r in chunks) and chunks[0]["id"] == "1:pos:0"


def test_rows_go_through_the_pipeline_with_the_char_tokenizer(tsv):
    tok = build_char_tokenizer()
    rows = C.minimal_edit_rows(tsv, log=quiet) + C.high_distance_rows(tsv, log=quiet)
    pairs, skips = load_preference_data(rows, tok, max_length=256, log=quiet)
    assert len(pairs) == 6 and skips.total == 0
    assert all(tok.unk_token_id not in p.prompt_ids + p.chosen_ids + p.rejected_ids for p in pairs)
    assert [p.meta["edit_bucket"] for p in pairs] == ["low"] * 3 + ["high"] * 3
    bucket_pairs(pairs)
    assert pairs[0].meta["edit_bucket"] == "low" and pairs[0].meta["edit_distance"] > 0
    sft, _ = load_sft_data(C.sft_rows(tsv, log=quiet), tok, log=quiet)
    assert len(sft) == 6
