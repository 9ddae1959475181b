"""QLoRA: model.load_in_4bit / load_in_8bit (bitsandbytes) with LoRA on top; the reference is the adapter-disabled
quantised base. Runs wherever bitsandbytes can quantise on this machine's device (its CPU backend included); skipped
with the reason otherwise."""

from __future__ import annotations

import math

import pytest

from dpolab.config import ConfigError, build_config
from dpolab.engine import Trainer

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'bitsandbytes>=0.46')")


def _cfg(tmp_path, name, *overrides):
    return build_config(
        {
            "model": {"tiny": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 16, "n_eval": 4, "n_terms": [2, 2], "max_value": 9},
                "max_length": 48,
            },
            "lora": {"enabled": True, "r": 4},
            "train": {"batch_size": 4, "max_steps": 3, "lr": 1e-2, "seed": 0},
            "eval": {"batch_size": 4},
            "output": {"dir": str(tmp_path / name), "progress": False},
        },
        list(overrides),
    )


@pytest.mark.parametrize("bits, ref", [(4, "adapter"), (8, "adapter"), (4, "precomputed")])
def test_qlora_trains_adapters_on_a_quantised_base(tmp_path, bits, ref):
    try:
        t = Trainer(_cfg(tmp_path, f"q{bits}", f"model.load_in_{bits}bit=true", f"reference.mode={ref}"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bitsandbytes {bnb.__version__} cannot quantise here: {e}")
    quantised = [type(m).__name__ for m in t.policy.modules() if type(m).__module__.startswith("bitsandbytes")]
    assert quantised, "no bitsandbytes layer in the policy"
    assert t.reference.mode == ref  # the adapter-disabled quantised base, live or scored once
    trainable = {n for n, p in t.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    s = t.fit()
    first, last = s["first_eval"], s["final_eval"]
    assert first["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 0: policy == reference
    assert math.isfinite(last["eval/loss"]) and last["eval/logratio_margin"] != 0.0
    assert (tmp_path / f"q{bits}" / "final" / "adapter_config.json").exists()


def test_quantised_weights_without_lora_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lora.enabled=true"):
        Trainer(_cfg(tmp_path, "x", "model.load_in_4bit=true", "lora.enabled=false"))


def test_4bit_layers_are_never_repacked_for_cpu_inference(tmp_path, monkeypatch):
    """On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit layer for inference at its first no-grad eval forward and
    never back, after which training steps failed (and computed in bfloat16). dpolab switches that off on every layer;
    the CPU flag is forced on here so that the check bites on any machine."""
    modules = pytest.importorskip("bitsandbytes.nn.modules")
    if not hasattr(modules, "has_avx512bf16"):
        pytest.skip(f"bitsandbytes {bnb.__version__} has no CPU repacking")
    monkeypatch.setattr(modules, "has_avx512bf16", lambda: True)
    try:
        t = Trainer(_cfg(tmp_path, "q4", "model.load_in_4bit=true"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bitsandbytes {bnb.__version__} cannot quantise here: {e}")
    layers = [m for m in t.policy.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
