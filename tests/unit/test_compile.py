"""``train.compile``: a model compiled in place (inductor) gives the fast paths' log-probs and gradients equal to the
plain path's, as ``test_fastpath.py`` checks them eagerly; its state dict and a deep copy (the live reference) are those
of the plain model. Compiling takes minutes on a small CPU: marked slow."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from test_fastpath import TOK, _compare, _model, _pairs

from dpolab.data.collate import collate_preference_fast
from dpolab.engine.runtime import compile_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler"),
]


@pytest.mark.parametrize("layout,logits", [("prefix", "response"), ("padded", "full")])
def test_compiled_fast_paths_equal_plain(layout, logits):
    model = compile_model(_model("tiny-gpt2"), "default")
    assert model._compiled_call_impl is not None  # really compiled (not a silent no-op)
    batch = collate_preference_fast(_pairs(), TOK.pad_token_id, layout, capacity=24)
    _compare(model, batch, layout, logits)  # the plain reference is compiled too: both sides through inductor


def test_compiled_model_keeps_its_weights_and_a_copy_is_its_own():
    eager = _model("tiny-gpt2")
    model = compile_model(_model("tiny-gpt2"), "default")
    assert list(model.state_dict()) == list(eager.state_dict())  # saved files and checkpoints unchanged
    ids = torch.randint(4, 60, (2, 9))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)
        want = copy.deepcopy(eager)
        for p in want.parameters():
            p.mul_(0.5)
        assert torch.allclose(ref(ids).logits, want(ids).logits, atol=1e-5)
        assert torch.allclose(model(ids).logits, eager(ids).logits, atol=1e-5)
