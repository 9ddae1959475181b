"""The sentiment task (S2) without a model: loading reviews, prompts and SFT rows, Bradley-Terry labels from oracle
scores, and the High / Medium / Low tiers."""

from __future__ import annotations

import math

import pytest

from dpolab.config import build_config
from dpolab.data.types import DataError
from dpolab.engine.data_setup import task_rows
from dpolab.tasks import sentiment as S

REVIEWS = [
    (
        "Negative",
        "This film was a total waste of two hours.<br /><br />The acting is wooden and the plot makes no sense at all.",
    ),
    ("Positive", "I loved every minute of this wonderful movie, the cast is superb and the music stays with you."),
    ("Negative", "Too short."),
    (
        "Positive",
        "A \u201cgem\u201d of a picture: funny, warm, clever and beautifully shot from start to finish, really.",
    ),
]


@pytest.fixture()
def tsv(tmp_path):
    path = tmp_path / "orig" / "train.tsv"
    path.parent.mkdir()
    path.write_text("Sentiment\tText\n" + "".join(f"{s}\t{t}\n" for s, t in REVIEWS), encoding="utf-8")
    (tmp_path / "orig" / "dev.tsv").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def test_load_reviews_cleans_text(tsv):
    reviews = S.load_reviews(str(tsv))
    assert [r.sentiment for r in reviews] == [s for s, _ in REVIEWS]
    assert [r.id for r in reviews] == ["train:1", "train:2", "train:3", "train:4"]
    assert "<br" not in reviews[0].text and "\n" in reviews[0].text
    assert reviews[3].text.startswith('A "gem"')
    mem = S.load_reviews([{"text": "great fun", "label": 1}, {"text": "awful", "label": 0}])
    assert [r.sentiment for r in mem] == ["Positive", "Negative"]
    with pytest.raises(DataError, match="expected columns"):
        S.load_reviews([{"review": "x"}])


def test_prompt_rows_prefix_and_continuation(tsv):
    rows = S.prompt_rows(S.load_reviews(str(tsv)), prefix_words=8, review_chars=40)
    assert [r["id"] for r in rows] == ["train:1", "train:2", "train:4"]  # "Too short." has no continuation
    r = rows[0]
    assert r["prompt"] == "This film was a total waste of two"
    assert r["review"].startswith(" hours.") and len(r["review"]) <= 40 and not r["review"].endswith(" ")
    assert set(r) == {"prompt", "review", "sentiment", "id"}
    text = S.load_reviews(str(tsv))[1].text
    assert (rows[1]["prompt"] + S.prompt_rows([S.load_reviews(str(tsv))[1]], review_chars=10_000)[0]["review"]) == text
    sub = S.prompt_rows(str(tsv), max_rows=2, seed=3)
    assert sub == S.prompt_rows(str(tsv), max_rows=2, seed=3) and len(sub) == 2


def test_sft_rows(tsv):
    rows = S.sft_rows(str(tsv), max_chars=30)
    assert [r["id"] for r in rows] == ["train:1", "train:2", "train:4"]  # no continuation after the prefix: dropped
    assert rows[1]["prompt"] == "I loved every minute of this wonderful movie," and rows[1]["completion"].startswith(
        " the cast"
    )
    for r in rows:
        assert len(r["completion"]) <= 30 and len(r["prompt"].split()) <= S.PREFIX_WORDS
    assert all(r["completion"] for r in rows)


def test_bt_probability_and_temperature():
    assert S.bt_probability(0.3, 0.3) == 0.5
    assert math.isclose(S.bt_probability(0.5, 0.0, 0.25), 1 / (1 + math.exp(-2)))
    assert math.isclose(S.bt_probability(0.0, 0.5) + S.bt_probability(0.5, 0.0), 1.0)
    with pytest.raises(ValueError):
        S.bt_probability(0, 1, 0.0)


def _labelled(n, s_a, s_b, seed=0, temperature=S.BT_TEMPERATURE):
    prompts = [{"prompt": f"p{i}", "id": f"r{i}", "review": f" human {i}"} for i in range(n)]
    samples = [(f"a{i}", f"b{i}") for i in range(n)]
    scores = [(s_a, s_b)] * n
    return S.label_pairs(prompts, samples, scores, seed=seed, temperature=temperature)


def test_bt_labels_large_gap_almost_always_the_better():
    rows = _labelled(2000, 0.9, -0.9)  # P = sigmoid(7.2) = 0.99925
    frac = sum(r["chosen"].startswith("a") for r in rows) / len(rows)
    assert frac > 0.995
    r = next(r for r in rows if r["chosen"].startswith("a"))
    assert r["oracle_chosen"] == 0.9 and r["oracle_rejected"] == -0.9 and r["oracle_margin"] == pytest.approx(1.8)
    assert r["tier"] == "high" and r["replaced"] is False and r["chosen_source"] == r["rejected_source"] == "sample"
    assert r["review"].startswith(" human") and r["id"].startswith("r")


def test_bt_labels_equal_scores_about_half_and_moderate_gap_matches_sigmoid():
    rows = _labelled(4000, 0.2, 0.2)
    frac = sum(r["chosen"].startswith("a") for r in rows) / len(rows)
    assert abs(frac - 0.5) < 0.03  # sd = 0.0079
    rows = _labelled(4000, 0.25, 0.0)
    frac = sum(r["chosen"].startswith("a") for r in rows) / len(rows)
    assert abs(frac - 1 / (1 + math.exp(-1))) < 0.03
    assert all(r["bt_p"] == pytest.approx(1 / (1 + math.exp(-1))) for r in rows if r["chosen"].startswith("a"))


def test_bt_labels_seeded():
    assert _labelled(200, 0.1, 0.0, seed=5) == _labelled(200, 0.1, 0.0, seed=5)
    assert _labelled(200, 0.1, 0.0, seed=5) != _labelled(200, 0.1, 0.0, seed=6)
    with pytest.raises(ValueError, match="differ in length"):
        S.label_pairs(["p"], [("a", "b")], [], seed=0)


def _tiers(n=40, seed=0):
    prompts = [{"prompt": f"p{i}", "id": f"r{i}"} for i in range(n)]
    samples = [(f"a{i}", f"b{i}") for i in range(n)]
    scores = [((i % 5) / 5, ((i * 3) % 7) / 7) for i in range(n)]
    high = S.label_pairs(prompts, samples, scores, seed=seed)
    humans = [f" human {i}" for i in range(n)]
    human_scores = [-0.5 + (i % 3) * 0.5 for i in range(n)]
    tiers = S.make_tiers(high, None, humans, seed=seed, human_scores=human_scores)
    return high, scores, humans, human_scores, tiers


def test_tiers_composition_exact():
    n = 40
    high, scores, humans, human_scores, tiers = _tiers(n)
    assert set(tiers) == set(S.TIERS) and all(len(rows) == n for rows in tiers.values())
    assert [r["id"] for r in tiers["medium"]] == [r["id"] for r in high] == [r["id"] for r in tiers["low"]]
    # High: both responses are the two SFT samples
    for r, h in zip(tiers["high"], high):
        assert (
            r["tier"] == "high" and not r["replaced"] and {r["chosen"], r["rejected"]} == {h["chosen"], h["rejected"]}
        )
    # Medium: exactly half replaced; the rest identical to High (apart from the tier)
    replaced = [r for r in tiers["medium"] if r["replaced"]]
    assert len(replaced) == n // 2 and all(r["tier"] == "medium" for r in tiers["medium"])
    for r, h in zip(tiers["medium"], high):
        if not r["replaced"]:
            assert {k: v for k, v in r.items() if k != "tier"} == {k: v for k, v in h.items() if k != "tier"}
    # Low: all replaced; every replaced pair is (best SFT sample, the human review), labelled either way
    assert all(r["replaced"] and r["tier"] == "low" for r in tiers["low"])
    human_chosen = 0
    for i, r in enumerate(tiers["low"]):
        best = max(scores[i])
        best_texts = {t for t, sc in zip((f"a{i}", f"b{i}"), scores[i]) if sc == best}  # either one on a tie
        assert humans[i] in (r["chosen"], r["rejected"]) and ({r["chosen"], r["rejected"]} - {humans[i]}) <= best_texts
        assert {r["chosen_source"], r["rejected_source"]} == {"sft_best", "human"}
        by_source = {r["chosen_source"]: r["oracle_chosen"], r["rejected_source"]: r["oracle_rejected"]}
        assert by_source == {"sft_best": best, "human": human_scores[i]}
        human_chosen += r["chosen_source"] == "human"
    assert 0 < human_chosen < n  # the label is a draw, not the tuple order
    # a pair replaced in Medium has the same label as in Low
    for m, low in zip(tiers["medium"], tiers["low"]):
        if m["replaced"]:
            assert (m["chosen"], m["rejected"]) == (low["chosen"], low["rejected"])


def test_tiers_odd_count_and_seeded():
    _, _, _, _, a = _tiers(9, seed=1)
    _, _, _, _, b = _tiers(9, seed=1)
    _, _, _, _, c = _tiers(9, seed=2)
    assert a == b and a != c
    assert sum(r["replaced"] for r in a["medium"]) == 4


def test_tiers_use_the_oracle_when_scores_are_missing():
    high = _labelled(4, 0.1, 0.0)
    tiers = S.make_tiers(
        high, [f"best{i}" for i in range(4)], ["h"] * 4, seed=0, oracle=lambda xs: [float(len(x)) for x in xs]
    )
    for r in tiers["low"]:
        by_source = {r["chosen_source"]: r["oracle_chosen"], r["rejected_source"]: r["oracle_rejected"]}
        assert by_source == {"sft_best": 5.0, "human": 1.0}
        assert r["chosen_source"] == "sft_best"  # gap 4 / 0.25: P = 1 - 1e-7
    with pytest.raises(ValueError, match="human_reviews"):
        S.make_tiers(high, None, ["h"], seed=0)


def test_task_rows_sentiment_sft_only(tsv):
    root = tsv.parent.parent
    cfg = build_config({"data": {"task": "sentiment", "task_args": {"path": str(root), "n_eval": 2}}})
    train, evals = task_rows(cfg.data, "sft", seed=0)
    assert len(train) == 3 and len(evals) == 2
    assert all(set(r) >= {"prompt", "completion"} for r in train + evals)
    with pytest.raises(DataError, match="SFT only"):
        task_rows(cfg.data, "preference", seed=0)
    bad = build_config({"data": {"task": "sentiment", "task_args": {"path": str(root), "oops": 1}}})
    with pytest.raises(DataError, match="oops"):
        task_rows(bad.data, "sft", seed=0)
