"""The trainer's default fast path (prefix-shared layout, LM head at response positions) gives the plain path's
loss, metrics and gradients on a training step; and a short run with it matches a plain run."""
from __future__ import annotations

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
PLAIN = ["train.layout=padded", "train.logits=full"]


def _cfg(tmp_path, name, model, *overrides):
    return build_config({
        "model": {"name_or_path": model, "tiny": TINY if model == "tiny-gpt2" else TINY_LLAMA},
        "data": {"task": "arithmetic", "task_args": {"n_train": 24, "n_eval": 8, "n_terms": [2, 3], "max_value": 20},
                 "max_length": 64},
        "loss": [{"name": "dpo"}, {"name": "sft", "weight": 0.2}, {"name": "gate-dpo", "weight": 0.5, "params": {"mode": "q10"}}],
        "train": {"batch_size": 6, "max_steps": 3, "lr": 1e-3, "schedule": "constant", "seed": 0},
        "eval": {"every": 0, "batch_size": 8, "at_start": False},
        "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
    }, list(overrides))


def _first_step(t):
    rows = t._accumulate()
    grads = torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])
    return rows[0], grads


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("extra", [[], ["lora.enabled=true", "lora.r=4"]])
def test_default_fast_path_equals_plain_on_a_step(tmp_path, model, extra):
    fast = Trainer(_cfg(tmp_path, "fast", model, *extra))
    plain = Trainer(_cfg(tmp_path, "plain", model, *extra, *PLAIN))
    assert fast.cfg.train.layout == "prefix" and fast.cfg.train.logits == "response"  # the default is the fast path
    (mf, gf), (mp, gp) = _first_step(fast), _first_step(plain)
    for k in ("loss", "loss/dpo", "loss/sft", "logps/chosen", "logps/rejected"):
        assert float(mf[k]) == pytest.approx(float(mp[k]), abs=1e-5), k
    assert torch.allclose(gf, gp, atol=1e-5, rtol=1e-4)
    from dpolab.models.fastpath import fast_path_report

    assert fast_path_report(fast.model).get(("prefix", "response"), "unprobed") is None  # really used, no fallback


def test_short_runs_match_with_precomputed_reference(tmp_path):
    a = Trainer(_cfg(tmp_path, "a", "tiny-llama", "reference.mode=precomputed")).fit()
    b = Trainer(_cfg(tmp_path, "b", "tiny-llama", "reference.mode=precomputed", *PLAIN)).fit()
    assert a["final_eval"]["eval/loss"] == pytest.approx(b["final_eval"]["eval/loss"], abs=1e-4)
