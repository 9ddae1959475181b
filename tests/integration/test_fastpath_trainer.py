"""The trainer's default fast path (prefix-shared layout, LM head at response positions) gives the plain path's
loss, metrics and gradients on a training step, also for model families whose sliding windows are shorter than the
sequences (Mistral, Phi-3: every layer; Gemma-2/3, Qwen2: local and global layers), from a preset or a saved
folder; bf16 autocast keeps it; and a short run with it matches a plain run."""

from __future__ import annotations

import pytest
import torch

from dpolab.config import build_config
from dpolab.engine import Trainer

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
TINY_FAMILY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}  # the presets' 16-token windows (and Gemma's head_dim 16) stay
PLAIN = ["train.layout=padded", "train.logits=full"]


def _cfg(tmp_path, name, model, *overrides, tokenizer=None):
    tiny = TINY if model == "tiny-gpt2" else TINY_LLAMA if model == "tiny-llama" else TINY_FAMILY
    return build_config(
        {
            "model": {"name_or_path": model, "tiny": tiny, "tokenizer": tokenizer},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 24, "n_eval": 8, "n_terms": [2, 3], "max_value": 20},
                "max_length": 64,
            },
            "loss": [
                {"name": "dpo"},
                {"name": "sft", "weight": 0.2},
                {"name": "gate-dpo", "weight": 0.5, "params": {"mode": "q10"}},
            ],
            "train": {"batch_size": 6, "max_steps": 3, "lr": 1e-3, "schedule": "constant", "seed": 0},
            "eval": {"every": 0, "batch_size": 8, "at_start": False},
            "output": {"dir": str(tmp_path / name), "progress": False, "save_final": False},
        },
        list(overrides),
    )


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


def _longest(t):
    from dpolab.data.collate import pair_length

    return max(pair_length(p) for p in t.train_data)


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2", "tiny-gemma3", "tiny-qwen2-sw", "tiny-phi3"])
def test_windowed_families_fast_path_equals_plain_on_a_step(tmp_path, model):
    from dpolab.models.fastpath import fast_path_report
    from dpolab.models.unwrap import unwrap

    fast = Trainer(_cfg(tmp_path, "fast", model))
    plain = Trainer(_cfg(tmp_path, "plain", model, *PLAIN))
    assert unwrap(fast.model, peft=True).config.sliding_window < _longest(fast) - 10  # the window cuts most sequences
    (mf, gf), (mp, gp) = _first_step(fast), _first_step(plain)
    for k in ("logps/chosen", "logps/rejected", "loss"):
        assert float(mf[k]) == pytest.approx(float(mp[k]), abs=1e-4), k
    assert torch.allclose(gf, gp, atol=1e-5, rtol=1e-4)
    assert fast_path_report(fast.model).get(("prefix", "response"), "unprobed") is None


def test_mistral_folder_with_window_through_the_trainer(tmp_path):
    """What ``dpolab train`` does with a real checkpoint: from_pretrained on a folder (config with a 16-token
    window)."""
    from transformers import AutoModelForCausalLM

    from dpolab.models.fastpath import fast_path_report
    from dpolab.models.load import tiny_config
    from dpolab.models.tokenizer import build_char_tokenizer

    torch.manual_seed(0)
    folder = tmp_path / "mistral-w16"
    AutoModelForCausalLM.from_config(tiny_config("tiny-mistral", build_char_tokenizer(), TINY_FAMILY)).save_pretrained(
        folder
    )
    fast = Trainer(_cfg(tmp_path, "fast", str(folder), tokenizer="char"))
    plain = Trainer(_cfg(tmp_path, "plain", str(folder), *PLAIN, tokenizer="char"))
    assert type(fast.policy).__name__ == "MistralForCausalLM" and fast.policy.config.sliding_window == 16 < _longest(
        fast
    )
    (mf, _), (mp, _) = _first_step(fast), _first_step(plain)
    assert float(mf["logps/chosen"]) == pytest.approx(float(mp["logps/chosen"]), abs=1e-4)
    assert fast_path_report(fast.model).get(("prefix", "response"), "unprobed") is None


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_bf16_keeps_the_fast_path_through_the_trainer(tmp_path, model):
    from dpolab.models.fastpath import fast_path_report

    fast = Trainer(_cfg(tmp_path, "fast", model, "train.bf16=true"))
    plain = Trainer(_cfg(tmp_path, "plain", model, "train.bf16=true", *PLAIN))
    (mf, _), (mp, _) = _first_step(fast), _first_step(plain)
    assert fast_path_report(fast.model).get(("prefix", "response", "bfloat16"), "unprobed") is None
    # bf16 rounding apart (the two layouts round differently): a small fraction of a nat per sequence
    assert float(mf["logps/chosen"]) == pytest.approx(float(mp["logps/chosen"]), abs=0.02)
