"""Packed and prefix-shared layouts of a batch: same math as the padded batch, less work.

The padded batch (``dpolab.data.collate``) holds 2B rows ``prompt + response`` right-padded to the longest.
Two other layouts compute exactly the same per-sequence log-probs:

``packed`` (padding-free packing)
    each sequence is a *unit*; units are placed first-fit (longest first) into rows no longer than the longest
    unit, with ``position_ids`` restarting at 0 for every unit and a block-diagonal causal attention mask, so a
    token only sees earlier tokens of its own sequence.

``prefix`` (prompt-prefix sharing, arXiv 2410.20305)
    each *pair* is one unit ``[prompt, chosen, rejected]``: the prompt is computed once. Chosen tokens attend to
    the prompt and earlier chosen tokens; rejected tokens attend to the prompt and earlier rejected tokens (never
    to chosen); both responses take positions continuing from the prompt (``p, p+1, ...``). Units are then
    packed into rows as above.

The layout is a dict (``batch["packed"]``)::

    input_ids     LongTensor [R, L]          packed tokens (pad_id on the unused tail of a row)
    position_ids  LongTensor [R, L]          the position each token has in its own sequence
    attn_mask     BoolTensor [R, 1, L, L]    True where query i may attend to key j (every position sees itself,
                                             so rows of padding never go all-masked)
    score_src     LongTensor [M]             flat index (row * L + col) of the hidden state predicting each scored token
    score_tgt     LongTensor [M]             the scored (response) token id
    score_seq     LongTensor [M]             which sequence of the padded batch (0..2B-1, or 0..B-1 for SFT)
    score_col     LongTensor [M]             its column in the padded ``token_logps`` layout [2B, T-1]

A scored token at padded position t (t >= 1) is predicted by the hidden state of the token at t-1 of the same
sequence; in the prefix layout the predecessor of the first response token is the last prompt token. As in the
padded batch, a response token at position 0 (no prompt, no BOS) is not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

ROW_TOKENS = 512  # the longest row the automatic choice considers (unless one unit is longer)
HIDDEN_SIZE = 768  # model width assumed by the row-length cost model when the caller does not give one


@dataclass
class _Unit:
    tokens: List[int] = field(default_factory=list)
    positions: List[int] = field(default_factory=list)
    segments: List[int] = field(default_factory=list)  # 0 = shared prompt, 1.. = a response branch
    # scored tokens: (index of predicting token in the unit, target id, sequence index, padded column)
    scores: List[tuple] = field(default_factory=list)

    def add_branch(self, ids: Sequence[int], seg: int, start_pos: int, pred_of_first: int, seq: int, col0: int) -> None:
        """Append a branch of tokens; token k is scored, predicted by the previous token of its branch."""
        base = len(self.tokens)
        for k, tok in enumerate(ids):
            pred = pred_of_first if k == 0 else base + k - 1
            if pred >= 0:
                self.scores.append((pred, int(tok), seq, col0 + k - 1))
            self.tokens.append(int(tok))
            self.positions.append(start_pos + k)
            self.segments.append(seg)


def sequence_units(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> List[_Unit]:
    """One unit per sequence ``prompt + response`` (the packed layout)."""
    units = []
    for s, (p, r) in enumerate(zip(prompts, responses)):
        u = _Unit(tokens=[int(t) for t in p], positions=list(range(len(p))), segments=[0] * len(p))
        u.add_branch(r, 0, len(p), len(p) - 1, s, len(p))
        units.append(u)
    return units


def prefix_units(prompts, chosen, rejected) -> List[_Unit]:
    """One unit per pair ``[prompt, chosen, rejected]`` (the prefix-shared layout)."""
    b = len(prompts)
    units = []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        u = _Unit(tokens=[int(t) for t in p], positions=list(range(len(p))), segments=[0] * len(p))
        u.add_branch(c, 1, len(p), len(p) - 1, i, len(p))
        u.add_branch(r, 2, len(p), len(p) - 1, b + i, len(p))
        units.append(u)
    return units


def _first_fit(lengths: Sequence[int], cap: int) -> tuple:
    """Rows (lists of unit indices) from first-fit, longest first, into rows of at most ``cap`` tokens; and fills."""
    rows: List[List[int]] = []
    fill: List[int] = []
    for j in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[j]
        for r, used in enumerate(fill):
            if used + n <= cap:
                rows[r].append(j)
                fill[r] += n
                break
        else:
            rows.append([j])
            fill.append(n)
    return rows, fill


def row_cost(n_rows: int, width: int, hidden_size: int) -> float:
    """Relative cost of a forward over ``n_rows`` rows of ``width`` positions (padding included): per position,
    the dense layers cost about 12 d^2 multiply-adds per layer and attention over the row 2 d * width, so the cost
    is proportional to rows * width * (6 d + width)."""
    return float(n_rows) * width * (6 * hidden_size + width)


def choose_rows(lengths: Sequence[int], hidden_size: int = HIDDEN_SIZE) -> tuple:
    """First-fit rows for the row length (from the longest unit up to ``ROW_TOKENS``) of least :func:`row_cost`:
    short units share rows (little padding), long ones get a row each (attention, quadratic in the row length,
    only over what a sequence needs)."""
    longest = max(lengths)
    caps = sorted({longest, *(k * longest for k in (2, 3, 4) if k * longest <= ROW_TOKENS), max(ROW_TOKENS, longest)})
    best = None
    for cap in caps:
        rows, fill = _first_fit(lengths, cap)
        cost = row_cost(len(rows), max(fill), hidden_size)
        if best is None or cost < best[0]:
            best = (cost, rows, fill)
    return best[1], best[2]


def pack_units(units: List[_Unit], pad_id: int, *, capacity: int = 0, hidden_size: Optional[int] = None) -> dict:
    """Place units into rows (first-fit, longest first) and build the layout dict described above.

    ``capacity`` is the row length (at least the longest unit); 0 (default) picks it with :func:`choose_rows`
    for a model of width ``hidden_size`` (default ``HIDDEN_SIZE``). The log-probs are the same for any row length.
    """
    if not units:
        raise ValueError("cannot pack an empty list")
    lengths = [len(u.tokens) for u in units]
    if capacity:
        rows, fill = _first_fit(lengths, max(capacity, max(lengths)))
    else:
        rows, fill = choose_rows(lengths, hidden_size or HIDDEN_SIZE)
    width = max(fill)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), int(pad_id), dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    unit_of = torch.full((n_rows, width), -1, dtype=torch.long)
    seg = torch.zeros((n_rows, width), dtype=torch.long)
    src, tgt, sq, col = [], [], [], []
    for r, members in enumerate(rows):
        off = 0
        for j in members:
            u = units[j]
            n = len(u.tokens)
            ids[r, off : off + n] = torch.tensor(u.tokens, dtype=torch.long)
            pos[r, off : off + n] = torch.tensor(u.positions, dtype=torch.long)
            seg[r, off : off + n] = torch.tensor(u.segments, dtype=torch.long)
            unit_of[r, off : off + n] = j
            for pred, t, s, c in u.scores:
                src.append(r * width + off + pred)
                tgt.append(t)
                sq.append(s)
                col.append(c)
            off += n
    q = torch.arange(width)
    causal = q[None, :] <= q[:, None]  # [L(query), L(key)]
    same_unit = (unit_of[:, :, None] == unit_of[:, None, :]) & (unit_of[:, :, None] >= 0)
    seg_ok = (seg[:, None, :] == 0) | (seg[:, :, None] == seg[:, None, :])
    mask = (same_unit & seg_ok & causal[None]) | torch.eye(width, dtype=torch.bool)[None]
    return {
        "input_ids": ids,
        "position_ids": pos,
        "attn_mask": mask[:, None],
        "score_src": torch.tensor(src, dtype=torch.long),
        "score_tgt": torch.tensor(tgt, dtype=torch.long),
        "score_seq": torch.tensor(sq, dtype=torch.long),
        "score_col": torch.tensor(col, dtype=torch.long),
    }


def preference_layout(pairs, pad_id: int, layout: str, *, capacity: int = 0, hidden_size: Optional[int] = None) -> dict:
    """The ``packed`` or ``prefix`` layout of B TokenizedPairs (sequence order as in ``collate_preference``)."""
    prompts = [p.prompt_ids for p in pairs]
    if layout == "prefix":
        units = prefix_units(prompts, [p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs])
    elif layout == "packed":
        units = sequence_units(prompts * 2, [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs])
    else:
        raise ValueError(f"unknown layout '{layout}'; valid: packed, prefix")
    return pack_units(units, pad_id, capacity=capacity, hidden_size=hidden_size)


def sft_layout(rows, pad_id: int, *, capacity: int = 0, hidden_size: Optional[int] = None) -> dict:
    """The ``packed`` layout of B TokenizedSFT rows."""
    return pack_units(
        sequence_units([r.prompt_ids for r in rows], [r.completion_ids for r in rows]),
        pad_id,
        capacity=capacity,
        hidden_size=hidden_size,
    )
