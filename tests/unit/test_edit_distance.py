"""Token edit distance: hand cases, agreement with a plain DP reference, symmetry; buckets and bucket_pairs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpolab.data.types import TokenizedPair
from dpolab.diagnostics import DEFAULT_EDGES, bucket_pairs, edit_bucket, token_edit_distance


def reference(a, b):
    """The textbook full-table Levenshtein DP."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]


@pytest.mark.parametrize(
    "a,b,d",
    [
        ([], [], 0),
        ([], [1, 2, 3], 3),
        ([1, 2, 3], [], 3),
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 2, 3], [1, 9, 3], 1),  # one substitution
        ([1, 2, 3], [1, 2, 9, 3], 1),  # one insertion
        ([1, 2, 3], [1, 3], 1),  # one deletion
        ([1, 2, 3], [3, 2, 1], 2),
        ([5, 5, 5], [5, 5], 1),  # prefix/suffix trimming must not over-trim repeated tokens
        (list("kitten"), list("sitting"), 3),
        (list("flaw"), list("lawn"), 2),
    ],
)
def test_hand_cases(a, b, d):
    assert token_edit_distance(a, b) == d == token_edit_distance(b, a)


def test_accepts_tuples_and_tensors():
    torch = pytest.importorskip("torch")
    assert token_edit_distance((1, 2, 3), torch.tensor([1, 9, 3])) == 1


tokens = st.lists(st.integers(0, 4), max_size=14)  # a small alphabet gives many matches and repeats


@settings(max_examples=300, deadline=None)
@given(tokens, tokens)
def test_matches_reference_and_is_symmetric(a, b):
    d = token_edit_distance(a, b)
    assert d == reference(a, b) == token_edit_distance(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))


@settings(max_examples=100, deadline=None)
@given(tokens, tokens, tokens)
def test_shared_context_does_not_change_distance(pre, a, b):
    assert token_edit_distance(pre + a + pre, pre + b + pre) == reference(pre + a + pre, pre + b + pre)


def test_edit_bucket_edges():
    assert DEFAULT_EDGES == (4, 16)
    assert [edit_bucket(d) for d in (0, 4, 5, 16, 17, 500)] == ["low", "low", "mid", "mid", "high", "high"]
    assert [edit_bucket(d, edges=(10,)) for d in (10, 11)] == ["low", "high"]
    assert edit_bucket(7, edges=(1, 5, 9), names=("a", "b", "c", "d")) == "c"
    for bad in ((), (16, 4), (4, 4), (-1, 3)):
        with pytest.raises(ValueError):
            edit_bucket(3, edges=bad)
    with pytest.raises(ValueError):
        edit_bucket(3, edges=(1, 2, 3))  # three edges need names
    with pytest.raises(ValueError):
        edit_bucket(-1)


def test_bucket_pairs_writes_meta_and_keeps_task_bucket():
    pairs = [
        TokenizedPair([1], [5, 6, 7, 2], [5, 9, 7, 2], meta={"edit_bucket": "near"}),
        TokenizedPair([1], list(range(10, 40)) + [2], [2]),
        TokenizedPair([1], [5] * 10, [6] * 10),
    ]
    assert bucket_pairs(pairs) == ["low", "high", "mid"]
    assert pairs[0].meta == {"edit_bucket": "near", "edit_distance": 1, "edit_bucket_tokens": "low"}
    assert pairs[1].meta["edit_distance"] == 30 and pairs[2].meta["edit_distance"] == 10
    assert bucket_pairs(pairs, edges=(0,)) == ["high", "high", "high"] and pairs[0].meta["edit_bucket"] == "near"
