"""collate: shapes, padding, and loss_mask covering exactly the response tokens (incl. EOS)."""

import pytest
import torch

from dpolab.data.collate import collate_preference, collate_sft, length_grouped_indices
from dpolab.data.types import TokenizedPair, TokenizedSFT

PAD = 0


def pairs():
    return [
        TokenizedPair([1, 5, 6], [7, 2], [8, 9, 9, 2], extras={"rm_margin": 0.5}, meta={"id": 0}),
        TokenizedPair([1, 5], [7, 7, 7, 2], [8, 2], extras={"rm_margin": -1.0}, meta={"id": 1}),
    ]


def test_preference_batch_layout():
    b = collate_preference(pairs(), PAD)
    assert b.input_ids.shape == (4, 7) and b.input_ids.dtype == torch.long
    assert b.input_ids[0].tolist() == [1, 5, 6, 7, 2, PAD, PAD]  # pair 0 chosen
    assert b.input_ids[2].tolist() == [1, 5, 6, 8, 9, 9, 2]  # pair 0 rejected at row B + 0
    assert b.input_ids[3].tolist() == [1, 5, 8, 2, PAD, PAD, PAD]
    assert b.attention_mask.dtype == torch.long and b.attention_mask.sum(1).tolist() == [5, 6, 7, 4]
    assert b.loss_mask.dtype == torch.bool
    assert b.loss_mask[0].tolist() == [False, False, False, True, True, False, False]
    assert b.loss_mask.sum(1).tolist() == [2, 4, 4, 2]  # exactly the response lengths, EOS included
    assert not (b.loss_mask & (b.attention_mask == 0)).any()
    assert torch.equal(b.extras["rm_margin"], torch.tensor([0.5, -1.0]))
    assert b.num_pairs == 2 and b.meta == [{"id": 0}, {"id": 1}]


def test_loss_mask_matches_response_tokens_after_shift():
    b = collate_preference(pairs(), PAD)
    targets = b.input_ids[:, 1:][b.loss_mask[:, 1:]].tolist()
    assert targets == [7, 2, 7, 7, 7, 2, 8, 9, 9, 2, 8, 2]


def test_pad_to_multiple_and_mismatched_extras():
    assert collate_preference(pairs(), PAD, pad_to_multiple_of=8).input_ids.shape == (4, 8)
    bad = pairs()
    bad[1].extras = {}
    with pytest.raises(ValueError, match="same extras"):
        collate_preference(bad, PAD)
    with pytest.raises(ValueError, match="empty"):
        collate_preference([], PAD)


def test_sft_batch():
    b = collate_sft([TokenizedSFT([1], [4, 5, 2], meta={"a": 1}), TokenizedSFT([1, 3, 3], [6, 2])], PAD)
    assert b.input_ids.tolist() == [[1, 4, 5, 2, PAD], [1, 3, 3, 6, 2]]
    assert b.loss_mask.tolist() == [[False, True, True, True, False], [False, False, False, True, True]]
    assert b.meta == [{"a": 1}, {}]


def test_length_grouped_indices_is_a_seeded_permutation():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8]
    a = length_grouped_indices(lengths, 2, seed=0)
    assert sorted(a) == list(range(8)) and a == length_grouped_indices(lengths, 2, seed=0)


def test_typed_batches_move_count_and_keep_their_kind():
    from dpolab.data.batches import LabelledRowBatch, PairBatch, RowBatch
    from dpolab.data.collate import collate_preference_fast, collate_unpaired_fast
    from dpolab.data.types import TokenizedUnpaired

    b = collate_preference_fast(pairs(), PAD, "prefix").with_index(torch.tensor([4, 5]))
    moved = b.to(torch.device("meta"))  # every tensor, also inside packed and extras; the original stays
    assert isinstance(moved, PairBatch) and moved.num_pairs == 2 and moved.meta == b.meta
    assert all(
        t.device.type == "meta"
        for t in (moved.input_ids, moved.index, moved.extras["rm_margin"], *moved.packed.values())
    )
    assert b.input_ids.device.type == "cpu" and b.tokens() == 5 + 6 + 7 + 4 and b.sequences == 4
    rows = [TokenizedUnpaired([1, 5], [7, 2], True), TokenizedUnpaired([1], [8, 8, 2], False)]
    u = collate_unpaired_fast(rows, PAD, "padded")
    assert isinstance(u, LabelledRowBatch) and isinstance(u, RowBatch) and u.examples == rows
    assert u.label.tolist() == [True, False] and u.tokens() == 8 and u.packed is None
    one = PairBatch.one_sided(u)  # single rows as the chosen half of a pair batch (KTO's reference)
    assert one.num_pairs == 2 and torch.equal(one.input_ids, u.input_ids)
