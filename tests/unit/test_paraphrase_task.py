"""The paraphrase task on a small synthetic Quora-format TSV: malformed rows reported (not raised), one-token
labels checked against the tokenizer, rows, the grouped seeded split, macro-F1, and the task_rows wiring."""

import pytest

from dpolab.config import DataConfig
from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.types import DataError
from dpolab.engine.data_setup import task_rows
from dpolab.models.tokenizer import build_char_tokenizer, gpt2_tokenizer_offline
from dpolab.tasks import paraphrase as P

CHAR = build_char_tokenizer()
HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"
ROWS = [
    "1\ta1\tHow do I learn Python?\tWhat is the best way to learn Python?\t1.0\n",
    "2\ta2\tWhat is love?\tWhy is the sky blue?\t0.0\n",
    # malformed like the real file: the quote eats the tab
    '3\ta3\tWhere is it?\t"""Where can I find a dress I saw?"\t\n',
    "4\ta4\tWhy is the sky blue?\tWhat is love?\t0.0\n",  # the pair of row 2 with the questions swapped
    "5\ta5\tHow tall is Everest?\tWhat is the height of Mount Everest?\t1.0\n",
    "6\ta6\tOnly three fields\t0.0\n",  # malformed: wrong number of fields
]


def quiet(_):
    pass


@pytest.fixture
def tsv(tmp_path):
    p = tmp_path / "quora-dev.csv"  # a .csv name holding TAB-separated data, like the real file
    p.write_text(HEADER + "".join(ROWS), encoding="utf-8")
    return str(p)


def synthetic_pairs(n=200):
    return [
        P.QuestionPair(f"id{i}", str(i), f"Question number {i // 2}?", f"Another question {i % 7}?", i % 3 == 0)
        for i in range(n)
    ]


def test_malformed_rows_are_counted_and_named_not_raised(tsv):
    logs = []
    d = P.load_pairs(tsv, log=logs.append)
    assert [p.id for p in d.pairs] == ["a1", "a2", "a4", "a5"]
    assert d.skips.total == 2
    assert d.skips.counts == {"invalid row (field 'is_duplicate')": 1, "invalid row": 1}
    assert "row 3: field 'is_duplicate'" in d.bad_rows[0] and "QQP index '3'" in d.bad_rows[0]
    assert "row 6" in d.bad_rows[1] and "expected 5 fields" in d.bad_rows[1]
    assert any("skipping bad row" in m and "row 3" in m for m in logs)
    assert "4 question pairs loaded" in logs[-1] and "skipped" in logs[-1]
    assert d.pairs[0].label == 1 and d.pairs[1].label == 0 and d.pairs[0].qid == "1"


def test_missing_columns_and_missing_file_raise(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column"):
        P.load_pairs(str(bad), log=quiet)
    with pytest.raises(DataError, match="file not found"):
        P.load_pairs(str(tmp_path / "nope.tsv"), log=quiet)


def test_labels_single_token_check():
    gpt2 = gpt2_tokenizer_offline()
    assert P.check_labels(gpt2, (" yes", " no")) == (3763, 645)
    assert P.resolve_labels(gpt2) == ((" yes", " no"), "")
    assert P.resolve_labels(CHAR) == (("Y", "N"), " ")  # ' yes' is 4 characters: fall back to one-character labels
    with pytest.raises(DataError, match="' yes' is 4 tokens"):
        P.check_labels(CHAR, (" yes", " no"))
    with pytest.raises(DataError, match="same token"):
        P.check_labels(CHAR, ("Y", "Y"))
    with pytest.raises(DataError, match="ONE token"):
        P.check_labels(gpt2, (" paraphrased", " no"))


def test_rows_and_pipeline_give_one_label_token(tsv):
    pairs = P.load_pairs(tsv, log=quiet).pairs
    labels, prefix = P.resolve_labels(CHAR)
    sft = P.sft_rows(pairs, labels=labels, answer_prefix=prefix)
    assert sft[0]["prompt"] == (
        "Question 1: How do I learn Python?\nQuestion 2: What is the best way to learn Python?\n"
        "Are these two questions paraphrases? Answer: "
    )
    assert [r["completion"] for r in sft] == ["Y", "N", "N", "Y"]
    pref = P.preference_rows(pairs, labels=labels, answer_prefix=prefix)
    assert [(r["chosen"], r["rejected"]) for r in pref] == [("Y", "N"), ("N", "Y"), ("N", "Y"), ("Y", "N")]
    toks, _ = load_sft_data(sft, CHAR, log=quiet)
    assert all(len(t.completion_ids) == 2 and t.completion_ids[-1] == CHAR.eos_token_id for t in toks)  # label + EOS
    gpt2 = gpt2_tokenizer_offline()
    pairs_tok, _ = load_preference_data(P.preference_rows(pairs), gpt2, log=quiet)
    assert [p.chosen_ids[0] for p in pairs_tok] == [3763, 645, 645, 3763]
    assert all(len(p.chosen_ids) == 2 and len(p.rejected_ids) == 2 for p in pairs_tok)


def test_split_is_seeded_disjoint_and_keeps_repeats_together(tsv):
    pairs = P.load_pairs(tsv, log=quiet).pairs + synthetic_pairs(200)
    pairs.append(
        P.QuestionPair("dup", "", "  how do I LEARN python? ", "What is the best way to learn Python?", 1)
    )  # a repeat of a1
    a = P.split_pairs(pairs, seed=3, dev=0.2, test=0.2)
    b = P.split_pairs(pairs, seed=3, dev=0.2, test=0.2)
    c = P.split_pairs(pairs, seed=4, dev=0.2, test=0.2)
    assert a == b and a != c
    assert sum(len(v) for v in a.values()) == len(pairs)
    keys = {s: {p.key for p in v} for s, v in a.items()}
    assert not (keys["train"] & keys["dev"]) and not (keys["train"] & keys["test"]) and not (keys["dev"] & keys["test"])
    where = {p.id: s for s, v in a.items() for p in v}
    assert where["a2"] == where["a4"] and where["a1"] == where["dup"]
    assert abs(len(a["dev"]) - 0.2 * len(pairs)) <= 3 and abs(len(a["test"]) - 0.2 * len(pairs)) <= 3
    counts = P.split_pairs(pairs, seed=0, dev=10, test=5)
    assert len(counts["dev"]) >= 10 and len(counts["test"]) >= 5
    strict = P.split_pairs(pairs, seed=0, group="question")
    qs = {s: {q for p in v for q in p.key} for s, v in strict.items()}
    assert not (qs["train"] & qs["dev"]) and not (qs["train"] & qs["test"]) and not (qs["dev"] & qs["test"])
    with pytest.raises(ValueError):
        P.split_pairs(pairs, dev=0.6, test=0.6)
    with pytest.raises(ValueError):
        P.split_pairs(pairs, group="nope")


def test_classification_metrics():
    m = P.classification_metrics([1, 1, 0, 0], [1, 0, 0, 0])
    assert m["accuracy"] == 0.75
    assert m["f1_paraphrase"] == pytest.approx(2 / 3) and m["f1_not_paraphrase"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    allyes = P.classification_metrics([1, 1, 1, 1], [1, 0, 0, 0])
    assert allyes["f1_not_paraphrase"] == 0.0


def test_task_rows_wiring(tsv):
    args = {"path": tsv, "dev": 1, "test": 1, "seed": 0}
    tr, ev = task_rows(DataConfig(task="paraphrase", task_args=args), "sft", 0, tokenizer=CHAR)
    assert len(tr) + len(ev) == 3 and all(r["completion"] in ("Y", "N") for r in tr + ev)
    tr, ev = task_rows(
        DataConfig(task="paraphrase", task_args=args), "preference", 0, tokenizer=gpt2_tokenizer_offline()
    )
    assert all({r["chosen"], r["rejected"]} == {" yes", " no"} for r in tr + ev)
    tr, ev = task_rows(
        DataConfig(task="paraphrase", task_args=dict(args, eval_split="test")), "sft", 0
    )  # no tokenizer: defaults
    assert tr[0]["completion"] in (" yes", " no")
    with pytest.raises(DataError, match="ONE token"):
        task_rows(DataConfig(task="paraphrase", task_args=dict(args, labels=[" yes", " no"])), "sft", 0, tokenizer=CHAR)
    with pytest.raises(DataError, match="unknown data.task_args"):
        task_rows(DataConfig(task="paraphrase", task_args=dict(args, bogus=1)), "sft", 0)
