"""Token-level edit distance between the chosen and rejected responses of a pair, and edit-distance buckets.

Study S3 (DPOP, arXiv 2402.13228) compares methods on pairs whose responses differ by a few tokens against
pairs that differ a lot. :func:`token_edit_distance` is the Levenshtein distance over token ids (insert,
delete and substitute each cost 1); :func:`edit_bucket` turns a distance into a bucket name and
:func:`bucket_pairs` labels tokenised pairs in place.

Default edges ``(4, 16)``: ``low`` = d <= 4 (one or two small token edits: a near-miss arithmetic value, a
one-word swap under BPE), ``mid`` = 4 < d <= 16, ``high`` = d > 16. They are in *tokens*, so they mean
different things for a character tokenizer (a one-word swap such as 'bad' -> 'good' is already 4) and a BPE
one; pass ``edges`` to suit the tokenizer. A bucket set by construction (``meta["edit_bucket"]``, e.g. the
arithmetic task's near/far or the IMDb CAD task's low/high) is never overwritten: the measured bucket goes
to ``meta["edit_bucket_tokens"]`` next to it.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from dpolab.data.types import TokenizedPair

DEFAULT_EDGES: Tuple[int, ...] = (4, 16)
_DEFAULT_NAMES = {1: ("low", "high"), 2: ("low", "mid", "high")}


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)  # tensors / arrays compare fast as Python ints


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences (unit costs for insert, delete, substitute).

    The common prefix and suffix are trimmed first (they never change the distance), so a minimal-edit pair
    costs about O(len) plus the DP over the differing middle; the DP keeps one row of the shorter sequence:
    O(len(a) * len(b)) time, O(min(len(a), len(b))) memory. Works on any sequences of hashable items
    (token ids, characters, words).
    """
    a, b = _as_list(a), _as_list(b)
    n, m = len(a), len(b)
    lim = min(n, m)
    s = 0
    while s < lim and a[s] == b[s]:
        s += 1
    e = 0
    while e < lim - s and a[n - 1 - e] == b[m - 1 - e]:
        e += 1
    a, b = a[s : n - e], b[s : m - e]
    if len(a) < len(b):
        a, b = b, a  # the row runs over the shorter sequence
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        left, diag = i, i - 1  # cur[j - 1] and prev[j - 1]
        for j, y in enumerate(b, 1):
            up = prev[j]
            if x == y:
                left = diag  # neighbouring cells differ by at most 1, so the diagonal is the minimum
            else:
                if up < left:
                    left = up
                if diag < left:
                    left = diag
                left += 1
            cur.append(left)
            diag = up
        prev = cur
    return prev[-1]


def _names(edges: Sequence[int], names: Optional[Sequence[str]]) -> Sequence[str]:
    if names is None:
        if len(edges) not in _DEFAULT_NAMES:
            raise ValueError(f"pass names=... (len(edges) + 1 of them) for {len(edges)} edges")
        names = _DEFAULT_NAMES[len(edges)]
    if len(names) != len(edges) + 1:
        raise ValueError(f"need len(edges) + 1 = {len(edges) + 1} names, got {len(names)}")
    return names


def _check_edges(edges: Sequence[int]) -> None:
    if not edges or any(int(x) != x or x < 0 for x in edges) or any(x >= y for x, y in zip(edges, edges[1:])):
        raise ValueError(f"edges must be strictly increasing non-negative integers, got {tuple(edges)}")


def edit_bucket(distance: int, edges: Sequence[int] = DEFAULT_EDGES, names: Optional[Sequence[str]] = None) -> str:
    """The bucket of ``distance``: ``names[k]`` for the first edge ``edges[k] >= distance``, else the last name.

    With the default edges ``(4, 16)``: 'low' (d <= 4), 'mid' (4 < d <= 16), 'high' (d > 16). One edge gives
    'low' / 'high'; other numbers of edges need ``names``.
    """
    _check_edges(edges)
    names = _names(edges, names)
    if distance < 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    for edge, name in zip(edges, names):
        if distance <= edge:
            return name
    return names[-1]


def bucket_pairs(
    pairs: Iterable[TokenizedPair], edges: Sequence[int] = DEFAULT_EDGES, names: Optional[Sequence[str]] = None
) -> List[str]:
    """Bucket each pair by the token edit distance between its chosen and rejected ids (the prompt is shared).

    Writes ``meta["edit_distance"]`` and ``meta["edit_bucket_tokens"]`` on each pair (an existing
    ``meta["edit_bucket"]``, set by the task, is left alone) and returns the buckets in order.
    """
    _check_edges(edges)
    names = _names(edges, names)
    out = []
    for p in pairs:
        d = token_edit_distance(p.chosen_ids, p.rejected_ids)
        b = edit_bucket(d, edges, names)
        p.meta["edit_distance"] = d
        p.meta["edit_bucket_tokens"] = b
        out.append(b)
    return out
