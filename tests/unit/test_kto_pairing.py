"""KTO's KL estimate scores mismatched pairs: every pair must put a completion after ANOTHER prompt. Under
data.unpaired_from_pairs a prompt's chosen and rejected rows sit side by side, so TRL's plain rotation by one row would
pair half the rows with their own prompt's answer (issue 32, defect 9)."""

from __future__ import annotations

import random

import pytest

from dpolab.config import build_config
from dpolab.data.collate import collate_unpaired_fast
from dpolab.data.types import TokenizedPair
from dpolab.engine.objectives.kto import KTOObjective, crossing_sources, pairs_to_unpaired


def _objective():
    cfg = build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "data": {"task": "arithmetic", "unpaired_from_pairs": True, "max_length": 64},
            "train": {"mode": "kto", "batch_size": 8},
        },
        [],
    )
    return KTOObjective(cfg)


def _pairs(n):
    # prompt i is [100 + i]; its chosen answer [i, 1] and its rejected answer [i, 0]: a completion's owner is its [0]
    return [TokenizedPair([100 + i], [i, 1], [i, 0]) for i in range(n)]


def _crosses(pairs_out):
    return [p.prompt_ids[0] - 100 != p.completion_ids[0] for p in pairs_out]


def test_every_evaluation_pair_crosses_prompts():
    rows = pairs_to_unpaired(_pairs(4))  # 8 rows: chosen 0, rejected 0, chosen 1, ...
    out = _objective().mismatched(rows)
    assert len(out) == 8 and all(_crosses(out))  # plain rotation: 4 of the 8 were matched


@pytest.mark.parametrize("split", [[8], [3, 5], [1, 1, 6]], ids=["one", "two", "three"])
def test_every_step_pair_crosses_prompts_across_micro_batches(split):
    rows = pairs_to_unpaired(_pairs(4))
    batches, at = [], 0
    for n in split:
        batches.append(collate_unpaired_fast(rows[at : at + n], 0, "padded"))
        at += n
    obj = _objective()
    completions = obj._step_completions(batches)
    out = obj.mismatched(rows, completions)
    assert all(_crosses(out))


def test_shuffled_rows_with_repeated_prompts_cross_when_they_can():
    rng = random.Random(0)
    prompts = [[rng.randrange(3)] for _ in range(50)]
    src = crossing_sources(prompts)
    assert all(prompts[s] != prompts[k] for k, s in enumerate(src))
    # the nearest such row before it, cyclically
    for k, s in enumerate(src):
        assert all(prompts[(k - j) % 50] == prompts[k] for j in range(1, (k - s) % 50))


def test_one_prompt_only_falls_back_to_the_row_before():
    assert crossing_sources([[7]] * 4) == [-1, 0, 1, 2]
    assert crossing_sources([[1], [2]]) == [1, 0]
