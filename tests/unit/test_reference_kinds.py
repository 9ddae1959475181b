"""What each kind of reference says about itself: its record, its checkpoint state, whether TR-DPO can move it."""

from __future__ import annotations

import pytest
import torch

from dpolab.models.reference import KINDS, AdapterOff, LiveCopy, PrecomputedTable, ReferenceSetupError, SeparateModel


def test_each_kind_names_itself_as_the_log_and_checkpoints_do():
    assert {k: c.description for k, c in KINDS.items()} == {
        "copy": "live copy",
        "adapter": "live adapter",
        "separate": "live separate",
        "precomputed": "log-probs precomputed once",
    }
    table = PrecomputedTable({"chosen": torch.zeros(2), "rejected": torch.zeros(2)}, cache_file=None, key={"k": "v"})
    assert table.record() == {"mode": "precomputed", "cache_file": None, "key": {"k": "v"}}
    assert SeparateModel(torch.nn.Linear(2, 2)).record() == {"mode": "separate"}
    assert table.describe() == "log-probs precomputed once" and table.model is None


def test_only_a_live_copy_moves_and_carries_its_weights():
    torch.manual_seed(0)
    ref, policy = LiveCopy(torch.nn.Linear(3, 2)), torch.nn.Linear(3, 2)
    before = ref.state_dict()
    assert not any(p.requires_grad for p in ref.model.parameters())  # frozen
    ref.mix_toward(policy, 0.25)
    assert torch.allclose(ref.model.weight, 0.75 * before["weight"] + 0.25 * policy.weight.detach())
    moved = ref.state_dict()
    again = LiveCopy(torch.nn.Linear(3, 2))
    again.load_state_dict(moved)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in moved.items())
    for other in (SeparateModel(torch.nn.Linear(3, 2)), PrecomputedTable({"chosen": torch.zeros(1)})):
        assert other.state_dict() == {}
        other.load_state_dict({})  # nothing to restore: fine
        with pytest.raises(ReferenceSetupError, match=f"reference is '{other.mode}'"):
            other.mix_toward(policy, 0.5)
        with pytest.raises(ReferenceSetupError, match="moved reference weights"):
            other.load_state_dict(moved)


def test_the_adapter_kind_needs_a_lora_policy():
    with pytest.raises(ReferenceSetupError, match="adapter needs a LoRA policy"):
        AdapterOff(torch.nn.Linear(2, 2))
