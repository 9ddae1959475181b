"""The built-in arithmetic task: determinism, the exact oracle, near vs far misses, label noise."""

import pytest

from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.tasks import arithmetic as A


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_problem_format_and_chain():
    p = A.Problem((17, 25, 8), ("+", "-"))
    assert p.prompt == "Q: 17+25-8\nA: " and p.completion == "17+25=42; 42-8=34" and p.value == 34
    assert set(p.prompt + p.completion) <= set(A.ALPHABET)


def test_deterministic_and_valid():
    a, b = A.make_problems(200, seed=7), A.make_problems(200, seed=7)
    assert a == b and a != A.make_problems(200, seed=8)
    assert all(2 <= len(p.terms) <= 4 and min(p.values) >= 0 and max(p.terms) <= 50 for p in a)
    assert A.preference_rows(a, miss="mixed", label_noise=0.3, seed=1) == A.preference_rows(
        b, miss="mixed", label_noise=0.3, seed=1
    )


def test_oracle():
    p = A.Problem((17, 25, 8), ("+", "-"))
    assert A.parse_answer("17+25=42; 42-8=34") == 34
    assert A.parse_answer("34") == 34 and A.parse_answer("3-5=-2") == -2
    assert A.parse_answer("17+25=42; 42-8=34\nQ: junk") == 34
    assert A.parse_answer("no idea") is None and A.parse_answer("17+25=") is None
    assert A.is_correct(p, p.completion) and A.is_correct(p, "34") and not A.is_correct(p, "17+25=42; 42-8=35")
    assert A.is_correct(p, p.completion, strict=True) and not A.is_correct(p, "34", strict=True)


def test_rows_are_right_and_wrong():
    probs = A.make_problems(300, seed=0)
    for miss in ("near", "far"):
        for p, r in zip(probs, A.preference_rows(probs, miss=miss, seed=0)):
            assert r["chosen"] == p.completion and r["rejected"] != r["chosen"] and not r["flipped"]
            assert A.is_correct(p, r["chosen"]) and not A.is_correct(p, r["rejected"])
            assert r["edit_bucket"] == miss and A.parse_answer(r["rejected"]) >= 0
    assert [r["completion"] for r in A.sft_rows(probs)] == [p.completion for p in probs]


def test_near_misses_are_closer_than_far_misses():
    probs = A.make_problems(200, seed=3)
    near = [edit_distance(r["chosen"], r["rejected"]) for r in A.preference_rows(probs, miss="near", seed=0)]
    far = [edit_distance(r["chosen"], r["rejected"]) for r in A.preference_rows(probs, miss="far", seed=0)]
    assert sum(near) / len(near) * 2.5 < sum(far) / len(far)
    assert max(near) <= 12  # one corrupted value carried through at most 3 steps


def test_label_noise_rate_and_mixed_buckets():
    probs = A.make_problems(1000, seed=1)
    rows = A.preference_rows(probs, miss="mixed", label_noise=0.2, seed=5)
    flipped = sum(r["flipped"] for r in rows)
    assert 150 < flipped < 250
    assert all((not A.is_correct(p, r["chosen"])) == r["flipped"] for p, r in zip(probs, rows))
    assert 400 < sum(r["edit_bucket"] == "near" for r in rows) < 600
    with pytest.raises(ValueError):
        A.preference_rows(probs, miss="close")


def test_loads_through_pipeline_with_task_alphabet():
    tok = build_char_tokenizer(A.ALPHABET)
    probs = A.make_problems(20, seed=0)
    pairs, skips = load_preference_data(A.preference_rows(probs, miss="mixed"), tok, log=lambda m: None)
    assert len(pairs) == 20 and skips.total == 0 and pairs[0].meta["edit_bucket"] in ("near", "far")
    assert tok.unk_token_id not in pairs[0].prompt_ids + pairs[0].chosen_ids
    rows, _ = load_sft_data(A.sft_rows(probs), tok, log=lambda m: None)
    assert tok.decode(rows[0].completion_ids, skip_special_tokens=True) == probs[0].completion
