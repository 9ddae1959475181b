"""train.gradient_checkpointing recomputes activations in backward and gives the same step: loss, metrics and
gradients equal the run without it, for every layout, full fine-tuning and LoRA, with a live reference."""

from __future__ import annotations

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer

pytestmark = pytest.mark.slow

TINY = {
    "tiny-gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2},
    "tiny-llama": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
}


def _trainer(tmp_path, name, model, *overrides):
    return Trainer(
        build_config(
            {
                "model": {"name_or_path": model, "tiny": TINY[model]},
                "data": {
                    "task": "arithmetic",
                    "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 3], "max_value": 20},
                    "max_length": 64,
                },
                "loss": [{"name": "dpo"}, {"name": "sft", "weight": 0.2}],
                "train": {"batch_size": 4, "grad_accum": 2, "max_steps": 2, "lr": 1e-3, "seed": 0},
                "eval": {"at_start": False},
                "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
            },
            list(overrides),
        )
    )


def _step(t):
    """Step 0's forward and backward, and how many tensors its forwards kept for backward (checkpointed blocks keep
    only their inputs, and recompute the rest in backward)."""
    t.model.train()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(1) or x, lambda x: x):
        rows = t._accumulate()
    return rows[0], torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None]), len(kept)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("layout", ["prefix", "packed", "padded"])
@pytest.mark.parametrize("lora", [False, True])
def test_same_step_with_and_without_checkpointing(tmp_path, model, layout, lora):
    extra = [f"train.layout={layout}"] + (
        ["lora.enabled=true", "lora.r=4", "reference.mode=adapter"] if lora else ["reference.mode=copy"]
    )
    plain = _trainer(tmp_path, "plain", model, *extra)
    ckpt = _trainer(tmp_path, "ckpt", model, *extra, "train.gradient_checkpointing=true")
    (ra, ga, na), (rb, gb, nb) = _step(plain), _step(ckpt)
    assert nb < na  # the checkpointed run really kept fewer activations
    for k in ("loss", "logps/chosen", "logps/rejected"):
        assert float(rb[k]) == pytest.approx(float(ra[k]), abs=1e-6), k
    assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-5)
